"""Pruning and compression: masks, schedules, data-free neuron surgery, trainable gates, importance, distillation."""
