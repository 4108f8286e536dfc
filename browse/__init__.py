"""`embedkit browse`: a local web app over a run's outputs and its search index.

    embedkit browse OUTPUT_BASE [--model M] [--labels FILE.csv] [--host 127.0.0.1] [--port N]

Modules: `data` (the one adapter to the output format and the index: every read of a model
folder, the manifest or a search index goes through it), `projection` (the 2-D collection map,
cached beside the index), `app` (the Flask app and its server; the only module that imports the
web framework, from requirements-ui.txt). Importing `embedkit` or `embedkit.browse.data` never
imports Flask.
"""
