"""Numbers from predictions (NumPy only): metrics with intervals, calibration fitting, paired comparison, figures; imports serve.contract, never train.job or train.release."""
