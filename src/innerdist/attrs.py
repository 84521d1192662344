"""Names of the attributes innerdist writes next to a dataset's funlib metadata.

Every key starts with ``innerdist_``; readers look them up here, never as literals.

====================  =====================================================  ===========
attribute             value                                                  written by
====================  =====================================================  ===========
``COMPLETE_ATTR``     ``False`` while a job writes, ``True`` once complete   every output
``JOB_ATTR``          the job's parameters, to refuse resuming another job   blockwise
``PREDICTOR_ATTR``    the predictor config (``Predictor.to_dict()``)         targets, predict
``LABELS_ATTR``       the labels volume targets were computed from           targets
``QUANTIZATION_ATTR`` ``{"scale", "offset"}`` of a quantised prediction      predict
``POSTPROCESSING_ATTR`` the checkpoint's post-processing levels              predict
``SEGMENTATION_ATTR`` the parameters a segmentation was made with            segment
``SOURCE_ATTR``       the file a volume was imported from                    import-tiff
``SYNTHETIC_ATTR``    ``True`` on generated demo data                        make-data
====================  =====================================================  ===========
"""

from __future__ import annotations

__all__ = [
    "COMPLETE_ATTR",
    "JOB_ATTR",
    "LABELS_ATTR",
    "POSTPROCESSING_ATTR",
    "PREDICTOR_ATTR",
    "QUANTIZATION_ATTR",
    "SEGMENTATION_ATTR",
    "SOURCE_ATTR",
    "SYNTHETIC_ATTR",
]

COMPLETE_ATTR = "innerdist_complete"
JOB_ATTR = "innerdist_job"
PREDICTOR_ATTR = "innerdist_predictor"
LABELS_ATTR = "innerdist_labels"
QUANTIZATION_ATTR = "innerdist_quantization"
POSTPROCESSING_ATTR = "innerdist_postprocessing"
SEGMENTATION_ATTR = "innerdist_segmentation"
#: Predictions made with test-time augmentation: the number of views averaged.
TTA_ATTR = "innerdist_tta"
SOURCE_ATTR = "innerdist_source"
SYNTHETIC_ATTR = "innerdist_synthetic"
