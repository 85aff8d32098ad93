"""An existing Django project's settings, with the streaming apps and TASKS added.

What the README's "In your own Django project" asks for, and nothing of the
reference project's: the lines marked "streaming" are the whole change.
"""

import os

SECRET_KEY = "a-test-project-of-its-own-not-for-production"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "shop",
    "streaming",  # streaming
    "streaming.tasks",  # streaming
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["SHOP_DATABASE"],
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}

TASKS = {"default": {"BACKEND": "streaming.tasks.StreamingBackend"}}  # streaming
