"""Label names stored once (``radvlsm.defaults``): what MONAI Label, the result JSON and a DICOM SEG call a lesion."""

from radvlsm.defaults import LABELS, LESION, lesion_names


def test_lesion_names_number_several_lesions_and_keep_one_plain():
    assert LABELS == {LESION: 1} == lesion_names(1)
    assert lesion_names(3) == {"lesion 1": 1, "lesion 2": 2, "lesion 3": 3}
    assert lesion_names(0) == {}
