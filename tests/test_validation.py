"""Validated arguments: asks and tells checked against the handler's pydantic
annotations, on every transport (`world` fixture), and a class from a script's
``__main__`` validated on a node in another process."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

import agentmesh as am
from agentmesh._private.kernel.agent import method_table

from .conftest import ROOT, World, wait_for
from .validation_agents import (
    DeadLetterLog,
    Lax,
    Line,
    Order,
    Shop,
    Size,
    Strict,
    StrictChild,
)

BAD_QTY = {"customer": "ann", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "many"}]}


async def test_a_dict_is_coerced_into_the_annotated_model(world: World) -> None:
    shop = await world.spawn(Shop)
    order = {"customer": "ann", "lines": [{"sku": "a", "qty": "2"}, {"sku": "b", "qty": 3}]}
    assert await shop.place(order) == "Order ann 5 "
    assert await shop.place(Order(customer="bob"), "gift") == "Order bob 0 gift"


async def test_a_bad_field_names_method_parameter_path_and_pydantic_message(
    world: World,
) -> None:
    shop = await world.spawn(Shop)
    with pytest.raises(am.BadArguments) as caught:
        await shop.place(BAD_QTY)
    message = str(caught.value)
    assert message.startswith(f"{shop.id}.place(): argument 'order' of Shop.place is not a")
    assert "order.lines[1].qty: Input should be a valid integer" in message
    assert "(input: 'many')" in message
    with pytest.raises(am.BadArguments, match=r"order\.customer: Field required"):
        await shop.place({"lines": []})
    with pytest.raises(am.BadArguments, match="a valid dictionary or instance of Order"):
        await shop.place("ann")
    assert await shop.count() == 0  # the handler never ran
    assert await shop.place({"customer": "ann"}) == "Order ann 0 "
    assert (await world.info(shop)).state == "running"
    assert await world.cell_value(shop, "rejected") == 3


async def test_optional_and_keyword_only_models(world: World) -> None:
    shop = await world.spawn(Shop)
    assert await shop.maybe() == "NoneType NoneType"
    assert await shop.maybe(None) == "NoneType NoneType"
    assert await shop.maybe({"customer": "ann"}) == "Order NoneType"
    assert await shop.maybe(rush={"sku": "a", "qty": "1"}) == "NoneType Line"
    with pytest.raises(am.BadArguments, match=r"rush\.qty: Input should be a valid integer"):
        await shop.maybe(rush={"sku": "a", "qty": "x"})
    with pytest.raises(am.BadArguments, match=r"argument 'order' of Shop\.maybe"):
        await shop.maybe(3)
    assert await shop.count() == 4


async def test_a_list_of_models(world: World) -> None:
    shop = await world.spawn(Shop)
    lines = [{"sku": "a", "qty": 1}, Line(sku="b", qty=2)]
    assert await shop.total(lines) == ["Line 1", "Line 2"]
    with pytest.raises(am.BadArguments) as caught:
        await shop.total([{"sku": "a", "qty": 1}, {"sku": "b"}])
    assert "lines[1].qty: Field required" in str(caught.value)
    with pytest.raises(am.BadArguments, match="a valid list"):
        await shop.total({"sku": "a", "qty": 1})
    assert await shop.count() == 1


async def test_keyword_arguments_are_validated_by_name(world: World) -> None:
    shop = await world.spawn(Shop)
    assert await shop.place(note="kw", order={"customer": "ann"}) == "Order ann 0 kw"
    with pytest.raises(am.BadArguments, match=r"order\.lines\[1\]\.qty"):
        await shop.place(order=BAD_QTY)
    with pytest.raises(am.BadArguments, match="unexpected keyword argument 'nope'"):
        await shop.place(order={"customer": "ann"}, nope=1)
    assert await shop.count() == 1


async def test_a_default_is_used_as_is_and_a_passed_value_is_validated(world: World) -> None:
    shop = await world.spawn(Shop)
    assert await shop.default() == "house"
    assert await shop.default({"customer": "ann"}) == "ann"
    with pytest.raises(am.BadArguments, match=r"order\.customer: Field required"):
        await shop.default({})


async def test_a_bad_tell_is_dead_lettered_with_the_reason_and_the_agent_lives(
    world: World,
) -> None:
    log = await world.spawn(DeadLetterLog)
    shop = await world.spawn(Shop)
    await shop.place.tell(BAD_QTY)

    async def dead_lettered() -> bool:
        return bool(await log.reasons(shop.id))

    await wait_for(dead_lettered, what="the bad tell dead-lettered")
    [reason] = await log.reasons(shop.id)
    assert reason.startswith(f"{shop.id}.place(): argument 'order' of Shop.place is not a")
    assert "order.lines[1].qty: Input should be a valid integer" in reason
    assert await shop.count() == 0
    await shop.place.tell({"customer": "ann"})  # a good one after it: handled
    assert await shop.place({"customer": "bob"}) == "Order bob 0 "
    assert await shop.count() == 2
    info = await world.info(shop)
    assert (info.state, info.crashes, info.rejected) == ("running", 0, 1)


async def test_plain_types_are_validated_only_when_the_class_opts_in(world: World) -> None:
    shop = await world.spawn(Shop)
    assert await shop.plain("3", {"a": 1}) == "str dict"  # by default: as sent
    strict = await world.spawn(Strict)
    result = await strict.scale("3", (1, "2.5"), {"x": "1", "y": 2}, {"width": 1, "height": "2"})
    assert result == "3 [1.0, 2.5] {'x': 1, 'y': 2} Size(width=1, height=2)"
    assert await strict.scale(4, [], {"x": 0, "y": 0}, Size(1, 1)) == (
        "4 [] {'x': 0, 'y': 0} Size(width=1, height=1)"
    )
    with pytest.raises(am.BadArguments, match=r"argument 'n' of Strict.scale .* n: Input"):
        await strict.scale("three", [], {"x": 0, "y": 0}, Size(1, 1))
    with pytest.raises(am.BadArguments, match=r"at\.y: Field required"):
        await strict.scale(1, [], {"x": 0}, Size(1, 1))
    with pytest.raises(am.BadArguments, match=r"factors\[1\]: Input should be a valid number"):
        await strict.scale(1, [1, "x"], {"x": 0, "y": 0}, Size(1, 1))
    assert await strict.anything({"a": 1}, 2) == "dict int"  # Any and object: as sent
    child = await world.spawn(StrictChild)
    assert await child.half("3") == "1.5"


async def test_validate_false_passes_arguments_as_sent(world: World) -> None:
    lax = await world.spawn(Lax)
    assert await lax.place({"customer": 1}) == "dict"


async def test_a_validator_raising_another_error_gives_bad_arguments(world: World) -> None:
    shop = await world.spawn(Shop)
    assert await shop.picky({"name": "ann"}) == "Ann"
    with pytest.raises(am.BadArguments, match="failed validation as Picky: KeyError: 'bob'"):
        await shop.picky({"name": "bob"})
    assert await shop.count() == 1
    assert (await world.info(shop)).state == "running"


async def test_an_async_generator_method_is_named_as_such(world: World) -> None:
    shop = await world.spawn(Shop)
    with pytest.raises(am.StreamMismatch) as caught:
        await shop.stream(1)
    assert "Shop.stream is a streaming method" in str(caught.value)
    assert "not async" not in str(caught.value)


def test_unannotated_handlers_stay_the_class_functions() -> None:
    handlers = method_table(Shop).handlers
    for name in ("plain", "count"):
        assert handlers[name] is Shop.__dict__[name]
    for name in ("place", "total", "maybe", "default", "picky"):
        assert handlers[name] is not Shop.__dict__[name]
        assert handlers[name].__wrapped__ is Shop.__dict__[name]  # type: ignore[attr-defined]
    assert method_table(Lax).handlers["place"] is Lax.__dict__["place"]
    assert "stream" not in handlers


async def test_a_model_instance_reaches_the_handler_as_is(mesh: am.Mesh) -> None:
    shop = await mesh.spawn(Shop)
    order = Order(customer="ann")
    await shop.place(order)
    assert getattr(mesh._node.cells[shop.id].instance, "last", None) is order  # not a copy


async def test_validators_are_built_once_per_class(
    mesh: am.Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real = pydantic.TypeAdapter

    def counting(annotation: Any, **kwargs: Any) -> pydantic.TypeAdapter[Any]:
        built.append(annotation)
        return real(annotation, **kwargs)

    class Once(am.Agent):
        async def place(self, order: Order, lines: list[Line]) -> int:
            return len(lines)

    monkeypatch.setattr(pydantic, "TypeAdapter", counting)
    agents = [await mesh.spawn(Once) for _ in range(3)]
    for agent in agents:
        for _ in range(10):
            assert await agent.place({"customer": "ann"}, [{"sku": "a", "qty": 1}]) == 1
    assert built == [Order, list[Line]]


async def test_every_kind_of_turn_validates(mesh: am.Mesh) -> None:
    """Serial turns, concurrent ones (a task each) and a batch of asks (`ask_each`)."""
    busy = await mesh.spawn(Shop, concurrency=4)
    assert await busy.place({"customer": "ann"}) == "Order ann 0 "
    with pytest.raises(am.BadArguments, match=r"order\.lines\[1\]\.qty"):
        await busy.place(BAD_QTY)
    shops = [await mesh.spawn(Shop) for _ in range(2)]
    deadline = asyncio.get_running_loop().time() + 10
    answers = mesh._node.ask_each(shops, "place", [{"customer": "ann"}, BAD_QTY], deadline)
    await answers.wait(deadline)
    assert answers.values[0] == "Order ann 0 "
    assert isinstance(answers.errors[1], am.BadArguments)
    assert "order.lines[1].qty" in str(answers.errors[1])


class Nested(am.Agent):
    class Job(BaseModel):
        size: int

    async def run(self, job: Job) -> int:
        return job.size


async def test_a_model_nested_in_the_agent_class_is_found(mesh: am.Mesh) -> None:
    nested = await mesh.spawn(Nested)
    assert await nested.run({"size": "2"}) == 2


async def test_an_annotation_that_cannot_be_evaluated_is_skipped_with_a_warning(
    mesh: am.Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    class Hidden(BaseModel):
        x: int

    class Blind(am.Agent):
        async def see(self, what: Hidden) -> str:  # a string here: no Hidden at module level
            return type(what).__name__

    with caplog.at_level(logging.WARNING, logger="agentmesh.agent"):
        blind = await mesh.spawn(Blind)
    assert await blind.see({"x": 1}) == "dict"  # as sent: it could not be checked
    [record] = [r for r in caplog.records if "cannot evaluate" in r.getMessage()]
    message = record.getMessage()
    assert "annotation 'Hidden' of parameter 'what' of " in message
    assert "Blind.see" in message
    assert "validate=False" in message

    class Strict(am.Agent, validate=True):  # every argument checked: this one cannot be
        async def see(self, what: Hidden) -> None:
            pass

    with pytest.raises(TypeError, match="annotation 'Hidden' of parameter 'what'"):
        await mesh.spawn(Strict)
    with pytest.raises(TypeError):
        am.ChildSpec(Strict)  # before it could travel anywhere


def test_validate_takes_a_bool() -> None:
    with pytest.raises(TypeError, match="validate= takes True or False"):

        class Odd(am.Agent, validate="yes"):  # type: ignore[arg-type]
            pass


SCRIPT = """
    from __future__ import annotations

    import asyncio
    import sys

    from pydantic import BaseModel

    import agentmesh as am


    class Line(BaseModel):
        sku: str
        qty: int


    class Order(BaseModel):
        customer: str
        lines: list[Line] = []


    class Shop(am.Agent):
        def __init__(self) -> None:
            self.published: list[str] = []

        async def place(self, order: Order) -> str:
            return f"{type(order).__name__} {sum(x.qty for x in order.lines)}"

        @am.subscribe("shop.orders")
        async def on_order(self, order: Order) -> None:
            self.published.append(type(order).__name__)

        async def seen(self) -> list[str]:
            return self.published


    async def main() -> None:
        async with am.Mesh(join=sys.argv[1], ask_timeout=10.0) as mesh:
            head = next(n.id for n in await mesh.nodes() if n.role == "head")
            shop = await mesh.spawn(Shop, node=head)
            print("on the head:", shop.node == head != mesh.node_id)
            print(await shop.place({"customer": "ann", "lines": [{"sku": "a", "qty": "2"}]}))
            try:
                await shop.place({"customer": "ann", "lines": [{"sku": "a", "qty": "x"}]})
            except am.BadArguments as exc:
                print("BadArguments:", str(exc).partition(": ")[2])
            await mesh.publish("shop.orders", {"customer": "bob"})
            async with asyncio.timeout(10):
                while not await shop.seen():
                    await asyncio.sleep(0.01)
            print("published:", await shop.seen())


    am.run(main())
"""


@pytest.mark.slow
async def test_a_class_from_a_scripts_main_validates_on_another_process(
    far_head: str, tmp_path: Path
) -> None:
    """The script's model and agent travel by value to the head, another process,
    where the names in their string annotations do not exist."""
    script = tmp_path / "shop.py"
    script.write_text(textwrap.dedent(SCRIPT))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        far_head,
        cwd=tmp_path,  # where neither the tests nor the script's module can be imported
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "on the head: True",
        "Order 2",
        "BadArguments: argument 'order' of Shop.place is not a valid Order: "
        "order.lines[0].qty: Input should be a valid integer, unable to parse string "
        "as an integer (input: 'x')",
        "published: ['Order']",
    ]


def test_the_example_of_the_docs_prints_what_they_say() -> None:
    page = (ROOT / "docs" / "messaging.md").read_text()
    section = page[page.index("## Validated arguments") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("It prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed
