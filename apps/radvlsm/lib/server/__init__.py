"""Fixes of MONAI Label 0.8.5's server, in the app (site-packages untouched); each module's doc lists them in detail.

One entry per module: what MONAI Label 0.8.5 gets wrong -> what the fix does; drop when.

* ``guards``: bad requests are 500s or accepted (unknown task, ``../`` ids and tags, non-object JSON ``params``,
  train options checked only in the background run after a 200, weight files overwritten by ``PUT /model``, no
  upload limit, ``from_token`` refusing every JWT under PyJWT 2.x) -> an ASGI middleware, exception handlers and
  wrappers of ``monailabel.endpoints`` functions answer 4xx naming the field; drop when upstream returns 4xx for
  each case of ``tests/test_server_bad_input.py`` and ``tests/test_server_auth.py`` without them.
* ``datastore``: ``LocalDatastore`` joins ids and tags into paths, writes labels and ``datastore_v2.json`` in place
  and will not start on a truncated one -> ``SafeLocalDatastore`` checks names, validates uploads, writes via temp
  file + rename and rebuilds from a corrupt JSON; drop when upstream's killed-save and corrupt-JSON cases of
  ``tests/test_faults.py`` pass with the plain ``LocalDatastore`` and ``../`` ids are a 4xx.
* ``dicomweb``: the DICOMweb datastore downloads dcmqi from GitHub at start-up, cannot write a SEG for a 2D image
  and fetches the image series when asked its final label -> ``DICOMWeb2DDatastore`` writes the SEG with
  pydicom-seg (a series' 3D label too), refuses empty/mis-sized labels (422) and answers labels from the cache;
  drop when upstream starts offline and ``tests/test_server_dicomweb.py`` and ``tests/test_server_dicomweb_volume.py``
  pass on MONAI Label's own ``DICOMWebDatastore``.
* ``openapi``: ``POST /infer/{model}`` is documented once for all models (``params`` a bare string, result "{}") ->
  the schema lists the served tasks with their parameters, result fields and examples (``openapi_examples.json``);
  drop when upstream lets an infer task describe its own parameters and result in the OpenAPI schema.
* ``workers``: ``POST /infer/{model}`` runs on the event-loop thread (one inference stalls ``/info``, datastore
  calls and every other user), and a result file shares its path with the stock client's copy on the same machine
  (the server deletes it after answering) -> the route runs ``run_inference`` in a bounded worker pool and reports
  ``latencies_ms.queue``; results live alone in private folders, removed with them; drop when upstream infers off
  the loop and names results uniquely (``tests/test_server_workers.py`` without ``workers.install``).
"""
