"""Merge the rows of one sweep folder into another: results run elsewhere (a machine
that cannot reach the main folder) join the main sweep.

Every row of SOURCE whose key is not yet in TARGET is committed to TARGET through
``ResultsStore.commit`` (artefacts first, then the row), with its probabilities and saved
models; rows already in TARGET are left as they are. Both folders must hold the same
protocol budget (seeds may differ: TARGET then lists both).
"""

from __future__ import annotations

from dsp_deploy.errors import InputError
from dsp_experiments.results import MODEL_KINDS, ResultsStore, row_key

__all__ = ["merge_folders"]


def merge_folders(source: ResultsStore, target: ResultsStore) -> tuple[int, int]:
    """Commit ``source``'s new rows to ``target``: (rows added, rows already there)."""
    protocol = source.protocol()
    if protocol is None:
        raise InputError(f"{source.root} holds no sweep.json")
    target.bind(protocol)  # refuses another budget
    added = present = 0
    done = target.done()
    for row in source.rows():
        key = row_key(row)
        if key in done:  # its artefacts may not even be in SOURCE (a copied results.csv)
            present += 1
            continue
        probabilities, labels = source.load_probs(key)
        paths = {kind: source.model_path(key, kind) for kind in MODEL_KINDS}
        models = {kind: path.read_bytes() for kind, path in paths.items() if path.exists()}
        if target.commit(row, probabilities=probabilities, labels=labels, models=models):
            added += 1
        else:
            present += 1
    return added, present
