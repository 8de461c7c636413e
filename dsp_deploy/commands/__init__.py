"""One module per CLI command; each defines ``register(app: typer.Typer) -> None``.

Command modules import heavy libraries (torch, aeon, ray) inside the command body only,
so ``dsp-deploy --help`` and the deploy-side commands never import them.
"""
