"""Look inside a clustering and a selection: the cluster explorer, one self-contained HTML page.

    impsamp inspect runs/clusters --selection runs/law --out law-explorer.html
    impsamp.inspect("runs/clusters", "law-explorer.html", selection="runs/law")

Per cluster: documents and tokens, top terms (TF-IDF over a seeded sample of its documents), three
example snippets, generic and target mass, weight, share of the selection and repeats, in a sortable,
filterable, paged table; a 2-D map of the centroids (PCA) sized by documents and coloured by weight;
the generic vs target histogram; for hierarchies, the tree. Scripts, styles and data are inline (no
network, no library), the corpus's text is escaped, and the page's size is bounded (about 0.65 kB
per cluster: 3 snippets of at most 200 characters, 6 terms).

Modules: `sampling` (the seeded sample of each cluster's documents, snippets), `terms` (TF-IDF),
`view` (the clustering as the page shows it: sizes, terms, snippets, map), `masses` (a selection's and
a target's numbers per cluster), `page` (the JSON and the HTML), `inspection` (`inspect`, one page per
selection) and `report` (`impsamp compare`'s report.html).
"""

from __future__ import annotations

from .inspection import EXPLORER, inspect, selection_pages
from .report import write_report_html

__all__ = ["EXPLORER", "inspect", "selection_pages", "write_report_html"]
