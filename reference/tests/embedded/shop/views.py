"""The project's own view: enqueue, and tell the page where to follow it."""

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from .tasks import build_report


@require_POST
def start_report(request):
    result = build_report.enqueue(int(request.POST.get("pages", "3")))
    return JsonResponse({"result_id": result.id, "stream": f"/stream/tasks/{result.id}"})


def report_status(request, result_id):
    result = build_report.get_result(result_id)
    value = result.return_value if result.status == "SUCCESSFUL" else None
    return JsonResponse({"status": result.status, "return_value": value})
