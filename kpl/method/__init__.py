"""The KPL method on arrays: retrieval of descriptions, optimal-transport pseudo-labels, vision proxies,
the label-free choice of k (paper section and docs/ARCHITECTURE.md "The KPL algorithm")."""
