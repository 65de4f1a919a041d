"""The task registry (server/services.py TASKS) against the contract: each task's analysis key
names a field of AnalysisOptions and of ImageAnalysis, its conversion writes that field's
message type, and no two tasks share a key, a Task value or a service."""

from __future__ import annotations

from google.rpc import status_pb2

from server.services import SERVICES, TASKS
from vision.v1 import analysis_pb2, model_service_pb2


def test_every_task_key_names_its_fields_of_the_analysis_messages() -> None:
    options = analysis_pb2.AnalysisOptions.DESCRIPTOR.fields_by_name
    results = analysis_pb2.ImageAnalysis.DESCRIPTOR.fields_by_name
    for task in TASKS:
        assert task.key.name in options, task.key.name
        written = task.message(status_pb2.Status(), None)
        assert written.DESCRIPTOR is results[task.key.name].message_type, task.key.name


def test_every_analysis_field_belongs_to_one_task() -> None:
    names = [task.key.name for task in TASKS]
    assert sorted(names) == sorted(analysis_pb2.AnalysisOptions.DESCRIPTOR.fields_by_name)
    assert sorted(names) == sorted(set(analysis_pb2.ImageAnalysis.DESCRIPTOR.fields_by_name)
                                   - {"image_size"})


def test_tasks_have_distinct_enum_values_and_services() -> None:
    enums = [task.task_enum for task in TASKS]
    assert sorted(enums) == sorted(v for v in model_service_pb2.Task.values()
                                   if v != model_service_pb2.TASK_UNSPECIFIED)
    assert len({task.task for task in TASKS}) == len(TASKS)
    services = [service.name for service in SERVICES]
    assert len(set(services)) == len(services)
    assert {task.descriptor.full_name for task in TASKS} <= set(services)
