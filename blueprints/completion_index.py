"""The completion index, built after the fact: blob-created events in batches, and the sweep that
repairs what a lost event or a killed worker left (see `shared/store/completion_indexer.py`)."""

import logging
import typing

import azure.functions as func

from shared.services import get_services

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("index_completions")
@bp.service_bus_queue_trigger(
    arg_name="msgs",
    queue_name="%COMPLETION_EVENTS_QUEUE%",
    connection="ServiceBusConnection",
    cardinality=func.Cardinality.MANY,
)
# The worker accepts only typing.List for a batch; it refuses `list[...]` as a non-type annotation.
async def index_completions(msgs: typing.List[func.ServiceBusMessage]) -> None:  # noqa: UP006
    """Index the documents a batch of blob-created events names, in one batched write; a failure
    raises, so the batch is delivered again."""
    added = await get_services().indexer.index_events(msg.get_body() for msg in msgs)
    log.info("Indexed %s new stored completions from %s events", added, len(msgs))


@bp.function_name("index_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%INDEX_SWEEP_SCHEDULE%", run_on_startup=False)
async def index_sweep(timer: func.TimerRequest) -> None:
    """Index documents captured since the last sweep that still have no index rows."""
    if timer.past_due:
        log.warning("timer.past_due: index_sweep is running late")
    await get_services().indexer.sweep()
