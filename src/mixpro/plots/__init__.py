"""Every PNG the apps write (matplotlib, Agg backend, no display needed).

* :mod:`.training` — training curves, mean α per epoch (Fig. 2a), α histogram (Fig. 2b).
* :mod:`.compare` — the ``mixpro compare`` bar plot.
* :mod:`.evaluation` — occlusion curves of ``mixpro eval`` (Fig. 3).
* :mod:`.paper` — the image figures of ``mixpro figures`` (Fig. 1, 4, 6).

The plots take plain data (metrics rows, result dicts, tensors, models) and import no app.
"""
