"""``python -m streams worker``: Faust's own command line for fraudpipe's app."""

from streams.app import app, settings

if __name__ == "__main__":
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app.main()
