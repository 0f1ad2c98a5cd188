"""`python -m recipes.imagenet_data_service`: a tf.data service dispatcher or
worker for the ImageNet recipe's --data_service
(`recipes/imagenet/data_service_cli.py`; installed, the
`keras-lars-data-service` script)."""

from . import scripts

if __name__ == "__main__":
    scripts.data_service()
