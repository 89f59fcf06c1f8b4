"""QA flags (medtrans.qa): the input checks say how the model's own mode cuts its inputs."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medtrans.intensity import MRNormalization
from medtrans.modes import MODES
from medtrans.qa import input_flags, mr_profile, training_profile


def test_the_orientation_flag_says_how_the_models_mode_cuts_its_inputs():
    """Used to say 'slices are cut axially' for coronal, sagittal and 3D models too."""
    arr = np.abs(np.random.default_rng(0).normal(300, 60, (20, 40, 40))).astype(np.float32)
    arr[:, :5] = 0
    lps = sitk.GetImageFromArray(arr)
    ras = sitk.GetImageFromArray(arr)
    ras.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    reference = training_profile([mr_profile(lps, MRNormalization())])
    for name, mode in MODES.items():
        flags = input_flags(mr_profile(ras, MRNormalization()), reference, cut_note=mode.cut_note)
        unseen = next(f for f in flags if f.name == "orientation_unseen")
        assert mode.cut_note in unseen.reason, name
    assert "coronal slices" in MODES["coronal"].cut_note and "3D patches" in MODES["3d"].cut_note
