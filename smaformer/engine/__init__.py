"""Engine: training, evaluation, prediction, export and model information."""
