"""`python -m recipes.large_batch_study`: the large-batch study's command line
(`recipes/study/cli.py`; installed, the `keras-lars-study` script)."""

from . import scripts

if __name__ == "__main__":
    scripts.study()
