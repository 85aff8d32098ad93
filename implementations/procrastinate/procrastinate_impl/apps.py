from django.apps import AppConfig


class ProcrastinateImplConfig(AppConfig):
    name = "procrastinate_impl"
    label = "procrastinate_impl"
