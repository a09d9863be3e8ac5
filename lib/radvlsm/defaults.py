"""Request defaults stored once (a leaf: imports nothing, so the CLI and settings can use it without torch)."""

#: the class-agnostic phrase used when a request names none (training phrases: :mod:`radvlsm.proposals.phrases`)
DEFAULT_PHRASE = "lesion"

#: candidate boxes a proposer returns unless asked otherwise (the ``top_k`` request parameter)
DEFAULT_TOP_K = 3

#: lesions the pipeline returns at most unless asked otherwise (the ``max_lesions`` request parameter)
DEFAULT_MAX_LESIONS = 3

#: the text path on a volume runs every this-many-th slice first, then the neighbours of what answered (the
#: ``slice_stride`` request parameter; 1 = every slice; :class:`radvlsm.volume_pipeline.VolumeTextConfig`). 2 gives
#: the label every slice would: a lesion is kept only through 2+ slices, and one of any 2 adjacent is run first
DEFAULT_SLICE_STRIDE = 2

#: the name of a lesion's value in every label the app writes (value 1; ``lesion 2``, ... when several are
#: numbered): MONAI Label's ``labels``, the result's ``label_names``, a DICOM SEG's segment label
LESION = "lesion"
LABELS = {LESION: 1}


def lesion_names(n: int) -> dict[str, int]:
    """Label names of ``n`` lesions numbered 1..n (a single one is just ``lesion``)."""
    return {LESION: 1} if n == 1 else {f"{LESION} {i}": i for i in range(1, n + 1)}
