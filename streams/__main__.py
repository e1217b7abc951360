"""``python -m streams worker``: Faust's own command line for fraudpipe's app."""

import sys

from streams import without_pandas

without_pandas()  # before LightGBM is imported
from streams.app import app, settings, web_flags  # noqa: E402

if __name__ == "__main__":
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    if sys.argv[1:2] == ["worker"]:
        sys.argv[2:2] = web_flags(settings)
    app.main()
