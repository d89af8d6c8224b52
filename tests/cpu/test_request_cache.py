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


def sends_for(prompts, counts, run_seed, iteration=0, purpose="rewrite", temperature=0.7, ids=None):
    """TEACHER_SENDS as the teacher client builds them: each request's seed from
    loopdistill.seeds.request_seed (0 when greedy) and its prompt's count (taken once, by the teacher)."""
    from loopdistill.schemas import TEACHER_SENDS, make_table
    from loopdistill.seeds import request_seed

    ids = ids or [f"r{i}" for i in range(len(prompts))]
    return make_table(TEACHER_SENDS, [
        {"request_id": rid, "prompt": p, "input_tokens": n,
         "seed": request_seed(run_seed, iteration, purpose, rid) if temperature > 0 else 0}
        for rid, p, n in zip(ids, prompts, counts)
    ])


def test_request_seed_is_the_pre_refactor_derivation():
    """request_seed(run, t, purpose, id) = teacher_seed(teacher_seed(run, t, purpose), id), bit for bit:
    the values below were computed at ebcbc02, so cached samples of earlier runs keep their keys."""
    from loopdistill.seeds import request_seed, teacher_seed

    assert request_seed(42, 3, "rewrite", "it3-rewrite-s17") == 1627201208
    assert request_seed(0, 0, "answer", "r0") == 1122841868
    assert request_seed(7, 1, "judge-answer", "x") == teacher_seed(teacher_seed(7, 1, "judge-answer"), "x")
    assert request_seed(7, 1, "judge-answer", "x") != request_seed(7, 2, "judge-answer", "x")


def test_teacher_actor_serves_repeats_from_the_cache(tmp_path):
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=2)
    task_prompts = [get_prompt(n) for n in ([1, 1, 4, 6], [2, 3, 4, 12], [4, 9, 10, 13])]
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"))
    sends = sends_for(task_prompts, teacher.count_tokens(task_prompts), run_seed=0)
    first = teacher.generate(sends)
    assert not any(first.column("cached").to_pylist())
    restarted = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"))  # e.g. after a crash
    second = restarted.generate(sends)
    assert all(second.column("cached").to_pylist())
    assert second.column("text").equals(first.column("text"))
    assert restarted.busy_seconds() == 0.0  # nothing was generated again
    stats = restarted.cache.stats()
    assert stats["requests"] == 3
    assert stats["output_tokens"] == sum(first.column("output_tokens").to_pylist())


def get_prompt(numbers):
    from loopdistill.tasks import get_task
    from loopdistill.tasks.game24 import question_for

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
    # a resume gives the URL again (its credentials are not stored), maybe with a rotated key
    assert a == namespace(base_url="http://u:rotated@a:8000/v1/", model="m1")
    local = TeacherActor.cache_namespace(SimpleNamespace(config=TeacherConfig(engine="transformers")))
    assert local == "smollm2|transformers"  # unchanged for local engines: earlier caches stay valid


# --- the spend journal: what was sent, not what the cache holds --------------------------------------
def test_journal_settles_at_usage_and_charges_open_reservations_in_full(tmp_path):
    from actors.request_cache import SpendJournal, journal_totals

    path = tmp_path / "run" / "journal.jsonl"
    journal = SpendJournal(path)
    a, b, c, d = journal.reserve([(10, 100), (20, 100), (30, 100), (40, 100)])
    journal.settle([(a, 11, 7)])  # answered: its usage
    journal.release([c])  # the server said 429: nothing generated, nothing billed
    journal.fail([d])  # failed for good (e.g. timed out): the provider may have billed it
    journal.close()
    # b is still open, as after a crash with it in flight: charged in full
    assert journal_totals(path) == {"requests": 3, "input_tokens": 11 + 20 + 40, "output_tokens": 7 + 100 + 100,
                                    "open": 1, "failed": 1, "refused": 0}
    with open(path, "a") as f:
        f.write('{"op": "reserve", "id": "torn", "input_to')  # the writer died mid-line, before sending
    assert journal_totals(path)["requests"] == 3
    assert journal_totals(tmp_path / "none.jsonl") == {"requests": 0, "input_tokens": 0, "output_tokens": 0, "open": 0, "failed": 0, "refused": 0}


def test_journal_is_shared_by_concurrent_writers(tmp_path):
    """Many threads reserving and settling at once (the HTTP engine's workers): no line lost or torn."""
    from concurrent.futures import ThreadPoolExecutor

    from actors.request_cache import SpendJournal, journal_totals

    journal = SpendJournal(tmp_path / "j.jsonl")

    def one(i):
        (rid,) = journal.reserve([(i, 50)])
        journal.settle([(rid, i, 1)])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    assert journal_totals(tmp_path / "j.jsonl") == {"requests": 200, "input_tokens": sum(range(200)), "output_tokens": 200,
                                                    "open": 0, "failed": 0, "refused": 0}


def test_teacher_actor_journals_what_it_sends_and_seeds_per_request(tmp_path):
    """Per-request seeds do not depend on how requests are batched or sharded: a call split in two
    finds every answer of the whole call cached, and nothing more is sent (the journal counts sends)."""
    from actors.request_cache import journal_totals
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=2)
    prompts = [get_prompt(n) for n in ([1, 1, 4, 6], [2, 3, 4, 12], [4, 9, 10, 13], [1, 2, 3, 4])]
    journal = tmp_path / "journal.jsonl"
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(journal))
    sends = sends_for(prompts, teacher.count_tokens(prompts), run_seed=5)
    whole = teacher.generate(sends)
    assert journal_totals(journal)["requests"] == 4
    other = TeacherActor(config.model_copy(update={"batch_size": 3}), "game24", str(tmp_path / "cache.sqlite"), str(journal))
    halves = [other.generate(sends.slice(0, 1)), other.generate(sends.slice(1))]
    assert all(all(h.column("cached").to_pylist()) for h in halves)
    assert [t for h in halves for t in h.column("text").to_pylist()] == whole.column("text").to_pylist()
    totals = journal_totals(journal)
    assert totals["requests"] == 4 and totals["open"] == 0
    assert totals["output_tokens"] == sum(whole.column("output_tokens").to_pylist())
    # a different run seed is a different request
    assert not any(other.generate(sends_for(prompts[:1], other.count_tokens(prompts[:1]), run_seed=6)).column("cached").to_pylist())


def _reserved_input_tokens(journal) -> list[int]:
    import json

    return [rec["input_tokens"] for rec in map(json.loads, open(journal)) if rec["op"] == "reserve"]


def test_teacher_actor_reserves_the_input_tokens_it_is_given(tmp_path):
    """The journal reserves the caller's prompt counts (the teacher client counted them once), one
    reservation per distinct request: an identical greedy request is sent once."""
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig
    from loopdistill.schemas import TEACHER_SENDS, make_table

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=2)
    journal = tmp_path / "journal.jsonl"
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(journal))
    prompts = [get_prompt(n) for n in ([1, 1, 4, 6], [2, 3, 4, 12])]
    given = [1000 + i for i in range(3)]  # not what the tokenizer counts: only the caller's figure can reach the journal
    sends = make_table(TEACHER_SENDS, [{"request_id": f"r{i}", "prompt": p, "seed": 0, "input_tokens": n}
                                       for i, (p, n) in enumerate(zip(prompts + prompts[:1], given))])
    out = teacher.generate(sends, temperature=0.0)
    assert _reserved_input_tokens(journal) == given[:2]
    assert out.column("text")[0] == out.column("text")[2]  # greedy, same prompt: one answer, paid once


def test_answers_cached_before_the_teacher_client_are_found(tmp_path):
    """The cache key is unchanged: an answer stored under the pre-refactor key (prompt, params with
    the seed teacher_seed(teacher_seed(run seed, iteration, purpose), request_id)) is served again."""
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig
    from loopdistill.seeds import teacher_seed

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, max_new_tokens=64)
    cache = RequestCache(tmp_path / "cache.sqlite")
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"))
    prompt = get_prompt([1, 1, 4, 6])
    old_seed = teacher_seed(teacher_seed(3, 2, "answer"), "it2-answer-s1")
    old_key = request_key(teacher.cache_namespace(), prompt, SamplingParams(64, 0.7, 0.95, seed=old_seed))
    cache.put_many([(old_key, Generation("paid before", 7, 3))])
    out = teacher.generate(sends_for([prompt], teacher.count_tokens([prompt]), run_seed=3, iteration=2, purpose="answer", ids=["it2-answer-s1"]))
    assert out.column("cached").to_pylist() == [True] and out.column("text").to_pylist() == ["paid before"]


def test_a_run_directory_from_before_journals_keeps_its_spend(tmp_path):
    from actors.request_cache import SpendJournal, journal_totals

    cache = RequestCache(tmp_path / "cache.sqlite")
    cache.put_many([("k1", Generation("a", 3, 4)), ("k2", Generation("b", 5, 6))])
    journal = SpendJournal(tmp_path / "journal.jsonl")
    journal.carry_over(cache.stats())
    (rid,) = journal.reserve([(7, 10)])  # one more request sent after the resume, still open
    assert journal_totals(tmp_path / "journal.jsonl") == {"requests": 3, "input_tokens": 15, "output_tokens": 20, "open": 1, "failed": 0, "refused": 0}
