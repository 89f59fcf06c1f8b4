"""Evaluation of synthetic CT: SynthRAD metrics, tissue metrics, statistics and HTML reports."""
