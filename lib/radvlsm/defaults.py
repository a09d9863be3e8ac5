"""Request defaults stored once (a leaf: imports nothing, so the CLI and settings can use it without torch)."""

#: the class-agnostic phrase used when a request names none (training phrases: :mod:`radvlsm.proposals.phrases`)
DEFAULT_PHRASE = "lesion"

#: candidate boxes a proposer returns unless asked otherwise (the ``top_k`` request parameter)
DEFAULT_TOP_K = 3
