"""The WSGI application the cheroot tests serve, in a cheroot process of their own.

One application, so that one server answers every kind of file response:

- ``/plain/files/<name>``: ``environ['wsgi.file_wrapper'](open(file))``
  (e2e_apps.plain: ``?nocl=1``, ``?offset=N``);
- ``/flask/files/<name>``: Flask's ``send_file`` (ETag, 304, ranges);
- ``/django/files/<name>``: Django's ``FileResponse``;
- ``/gen/file?...``: apps_gunicorn's application (``skip``, ``cl``,
  ``status``, ``write``) over the file named by FASTWRAP_TEST_FILE;
- ``/__stats__``: this process's ``fastwrap.stats()``.

Files come from the directory named by FASTWRAP_E2E_ROOT.
"""
from __future__ import annotations

from cheroot.wsgi import PathInfoDispatcher

import apps_gunicorn
import e2e_apps
from _servers import with_stats

app = with_stats(PathInfoDispatcher({
    "/plain": e2e_apps.plain,
    "/flask": e2e_apps.flask,
    "/django": e2e_apps.django,
    "/gen": apps_gunicorn.app,
}))
