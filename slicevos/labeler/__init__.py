"""``slicevos-label``: label a CT in the browser from a few drawn slices.

Layers (imports point down):

- ``server``  Starlette app: token check, body limits, routes, static page files;
- ``state``   :class:`~slicevos.labeler.state.Labeler`: the volume, the propagation session
  behind a lock, drawing with undo, background propagation, save;
- ``edits``   stroke / fill requests checked and rasterised onto a label slice;
- ``render``  slices of the three views as PNG (grey image, or label ids as grey values);
- ``sidecar`` autosave of every key slice and the session state beside the output;
- ``launch``  the command as a child process driven over HTTP (tests, benchmark).

The page (``page/``: plain HTML, CSS and JavaScript written for this project) asks for the
slices it shows, one at a time; the volume never travels as a whole.
"""
