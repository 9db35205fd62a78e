"""`valor run`: the pipeline. engine.py (stages as data, fingerprints, markers, running), stages.py (STAGES and thin
runners over each stage's own entry point), layout.py (the only owner of output paths), prepare.py (demo corpus, tiny
teachers), cli.py (the command)."""
