"""From a dataset on disk to training-ready cases: acquisition, validation, dataset layouts, volume I/O,
the fingerprint and preprocessing plan, preprocessing, and the patient-disjoint split."""
