"""roadtop: fast.ai Lesson 7 ('Road to the Top') as a reusable Kaggle pipeline."""

__version__ = "0.1.0"
