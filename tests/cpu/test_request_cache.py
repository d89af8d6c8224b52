from actors.engines.base import Generation, SamplingParams
from actors.request_cache import RequestCache, request_key


def test_key_depends_on_every_part_of_the_request():
    p = SamplingParams(16, 0.7, 0.9, seed=1)
    base = request_key("m", "hello", p)
    assert base == request_key("m", "hello", SamplingParams(16, 0.7, 0.9, seed=1))
    assert base != request_key("m2", "hello", p)
    assert base != request_key("m", "hello!", p)
    assert base != request_key("m", "hello", SamplingParams(16, 0.7, 0.9, seed=2))
    assert base != request_key("m", "hello", SamplingParams(17, 0.7, 0.9, seed=1))


def test_responses_persist_across_instances_and_are_stored_once(tmp_path):
    path = tmp_path / "c" / "cache.sqlite"
    cache = RequestCache(path)
    cache.put_many([("k1", Generation("a", 3, 4)), ("k2", Generation("b", 5, 6))])
    cache.put_many([("k1", Generation("other", 9, 9))])  # first answer wins: paid once
    reopened = RequestCache(path)
    got = reopened.get_many(["k1", "k2", "k3"])
    assert set(got) == {"k1", "k2"} and got["k1"].text == "a" and got["k2"].output_tokens == 6
    assert reopened.stats() == {"requests": 2, "input_tokens": 8, "output_tokens": 10}


def test_teacher_actor_serves_repeats_from_the_cache(tmp_path):
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig
    from loopdistill.schemas import TEACHER_REQUESTS, make_table

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=2)
    task_prompts = [get_prompt(n) for n in ([1, 1, 4, 6], [2, 3, 4, 12], [4, 9, 10, 13])]
    requests = make_table(TEACHER_REQUESTS, [{"request_id": f"r{i}", "prompt": p} for i, p in enumerate(task_prompts)])
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"))
    first = teacher.generate(requests, seed=0)
    assert not any(first.column("cached").to_pylist())
    restarted = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"))  # e.g. after a crash
    second = restarted.generate(requests, seed=0)
    assert all(second.column("cached").to_pylist())
    assert second.column("text").equals(first.column("text"))
    assert restarted.busy_seconds() == 0.0  # nothing was generated again
    stats = restarted.cache.stats()
    assert stats["requests"] == 3
    assert stats["output_tokens"] == sum(first.column("output_tokens").to_pylist())


def get_prompt(numbers):
    from tasks import get_task
    from tasks.game24 import question_for

    return get_task("game24").answer_prompt(question_for(numbers))


def test_http_teacher_answers_are_cached_per_server_and_remote_model():
    from types import SimpleNamespace

    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig

    def namespace(**openai):
        return TeacherActor.cache_namespace(SimpleNamespace(config=TeacherConfig(engine="openai", openai=openai)))

    a = namespace(base_url="http://a:8000/v1", model="m1")
    assert a != namespace(base_url="http://b:8000/v1", model="m1")
    assert a != namespace(base_url="http://a:8000/v1", model="m2")
    local = TeacherActor.cache_namespace(SimpleNamespace(config=TeacherConfig(engine="transformers")))
    assert local == "smollm2|transformers"  # unchanged for local engines: earlier caches stay valid
