#!/usr/bin/env bash
# The GPU checks of every open issue, in one run of under 9 minutes on one H100/H200 (the `device` tool):
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu-check), one file per check
#
# 1. the trainer: slm-126m tokens/s and MFU in bfloat16 with torch.compile and fused AdamW, and `tiny`,
#    against a plain torch loop of the same model (benchmarks/bench_train.py --gpu);
# 2. the model families of `compare --models` on the GPU: dense, projected (cluster codes) and soup
#    (histogram codes), a few bf16 training steps each, on random tokens (no faiss needed);
# 3. embedding on the GPU against plain sentence-transformers (benchmarks/bench_embed.py);
# 4. `embed --engine ray --gpus-per-worker 0.5` on a local Ray cluster (benchmarks/bench_ray.py), if Ray
#    is installed there; then `--tokenize-tasks` (shards tokenized in CPU-only Ray tasks feeding the GPU
#    task) against the local engine on 40,000 documents: does one host reach its tokenizing bound?
# GPU_CHECK_DEVICE=cpu GPU_CHECK_BATCH=2 runs check 2 on a CPU (a dry run of the script's Python).
# Each check has its own time limit, so one that hangs leaves the others their time. The device machine
# has no network: it runs with the packages it has (`pip install -e . --no-deps` makes impsamp importable).
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
run() {  # run NAME SECONDS CMD...: CMD's output to $OUT/NAME.log, its exit status noted
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; lscpu | grep 'Model name'; nproc
  $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'; } > "$OUT/machine.txt" 2>&1

run train 180 $PY benchmarks/bench_train.py --gpu --steps 40 --json "$OUT/train.json"
run families 60 $PY - <<'EOF'
import os, time, torch
from impsamp.training.model import GPT
from impsamp.training.projected import ProjectedGPT
from impsamp.training.shape import ModelConfig, Projection

shape = dict(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, mlp_hidden=768, block_size=256)
models = {"dense": (GPT(ModelConfig(**shape)), None),
          "projected": (ProjectedGPT(ModelConfig(**shape, projection=Projection(16, 8, 8))), 3),
          "soup": (ProjectedGPT(ModelConfig(**shape, projection=Projection(16, 8, 8, condition="histogram"))),
                   torch.full((16,), 1 / 16).numpy())}
dev, batch = os.environ.get("GPU_CHECK_DEVICE", "cuda"), int(os.environ.get("GPU_CHECK_BATCH", "32"))
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for name, (model, cond) in models.items():
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 4096, (batch, 257), device=dev)
    for step in range(13):
        if step == 3:
            sync(); t = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            kw = {} if cond is None else {"cond": cond}
            loss = model(x[:, :-1], x[:, 1:], **kw)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    sync()
    print(f"{name}: loss {loss.item():.3f}, {10 * batch * 256 / (time.perf_counter() - t):,.0f} tokens/s (eager)")
EOF
run embed 110 $PY benchmarks/bench_embed.py --device cuda --rounds 1 --child-timeout 45 --docs 20000 \
  --write "$OUT/embed.md"
if $PY -c 'import ray' 2>/dev/null; then
  run ray 80 $PY benchmarks/bench_ray.py --device cuda --gpus-per-worker 0.5 --docs 4000 --write "$OUT/ray.md"
  run ray_fed 90 $PY benchmarks/bench_ray.py --device cuda --engines local,ray-fed --docs 40000 \
    --rows-per-shard 1000 --write "$OUT/ray_fed.md"
else
  echo "ray: not installed on this machine" | tee -a "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
