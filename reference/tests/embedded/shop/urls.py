from django.urls import path

from . import views

urlpatterns = [
    path("reports/", views.start_report),
    path("reports/<str:result_id>/", views.report_status),
]
