"""Rank1Settings: one vocabulary from Python, RANK1_* environment variables and a TOML file.

Pure tests of precedence, validation and secrets; then the same reranker from each source,
on the shared embedded engine and on a loopback vLLM server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rank1_integrations import Rank1Reranker
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.settings import JUDGING_FIELDS, Rank1Settings
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, SORTED_PASSAGE

SECRET = "sk-rank1-do-not-show"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RANK1_") or name == "VLLM_API_KEY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rank1.toml"
    path.write_text(text)
    return path


def test_given_beats_environment_beats_file_beats_default(tmp_path, monkeypatch) -> None:
    config = write(tmp_path, 'max_reasoning_tokens = 300\ntemplate = "TRECCOVID"\nmax_retries = 2\n[serve]\nport = 1\n')
    assert Rank1Settings().max_reasoning_tokens == 8192
    from_file = Rank1Settings.load(config)
    assert (from_file.max_reasoning_tokens, from_file.template, from_file.max_retries) == (300, "TRECCOVID", 2)
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", "200")
    assert Rank1Settings.load(config).max_reasoning_tokens == 200
    assert Rank1Settings.load(config, max_reasoning_tokens=100).max_reasoning_tokens == 100
    assert Rank1Settings.load(config).template == "TRECCOVID"  # what only the file says still comes from it


def test_lists_and_tables_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RANK1_SERVERS", "http://a:8000/v1, http://b:8000")
    monkeypatch.setenv("RANK1_ENGINE_ARGS", '{"dtype": "float32", "max_num_seqs": 8}')
    monkeypatch.setenv("RANK1_REASONING_EFFORT", "none")
    settings = Rank1Settings()
    assert settings.servers == ("http://a:8000/v1", "http://b:8000")
    assert settings.engine_args == {"dtype": "float32", "max_num_seqs": 8}
    assert settings.reasoning_effort == "none"
    assert not settings.embedded


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_reasoning_tokens": 0}, "max_reasoning_tokens"),
        ({"max_reasoning_tokens": True}, "max_reasoning_tokens"),
        ({"timeout": float("nan")}, "timeout"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"adaptive_margin": 1.5}, "adaptive_margin"),
        ({"on_failure": "ignore"}, "on_failure"),
        ({"model": "  "}, "model"),
        ({"max_reasoning_token": 5}, "max_reasoning_token: unknown setting"),
    ],
)
def test_invalid_and_unknown_settings_are_refused_naming_the_setting(values, named) -> None:
    with pytest.raises(InvalidInputError, match=named):
        Rank1Settings(**values)


def test_a_bad_file_is_refused_naming_the_setting_and_the_file(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="max_concurrency"):
        Rank1Settings.load(write(tmp_path, "max_concurrency = -1\n"))
    with pytest.raises(InvalidInputError, match="bogus: unknown setting"):
        Rank1Settings.load(write(tmp_path, "bogus = 1\n"))
    with pytest.raises(InvalidInputError, match=r"rank1\.toml"):
        Rank1Settings.load(write(tmp_path, "max_concurrency = \n"))
    with pytest.raises(InvalidInputError, match="cannot be read"):
        Rank1Settings.load(tmp_path / "missing.toml")


def test_the_api_key_never_shows(monkeypatch) -> None:
    monkeypatch.setenv("RANK1_API_KEY", f"  {SECRET}\n")
    settings = Rank1Settings()
    assert settings.resolved_api_key().get_secret_value() == SECRET  # stripped, as clients send it
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert SECRET not in shown
    with pytest.raises(InvalidInputError) as refused:
        Rank1Settings(api_key=SECRET, max_concurrency=0)
    assert SECRET not in str(refused.value)
    monkeypatch.delenv("RANK1_API_KEY")
    monkeypatch.setenv("VLLM_API_KEY", "vllm-key")
    assert Rank1Settings().resolved_api_key().get_secret_value() == "vllm-key"
    monkeypatch.setenv("TEAM_KEY", "team-key")
    assert Rank1Settings(api_key_env="TEAM_KEY").resolved_api_key().get_secret_value() == "team-key"  # named: first
    with pytest.raises(InvalidInputError, match="NOT_SET_ANYWHERE is not set"):
        Rank1Settings(api_key_env="NOT_SET_ANYWHERE").resolved_api_key()


def test_copies_are_validated_and_per_call_changes_are_judging_settings_only(monkeypatch) -> None:
    settings = Rank1Settings(max_reasoning_tokens=64)
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", "9")  # a copy never reads the environment again
    assert settings.replace(template="TRECCOVID").max_reasoning_tokens == 64
    assert settings.judging(reasoning_effort="none").reasoning_effort == "none"
    with pytest.raises(InvalidInputError, match="max_reasoning_tokens"):
        settings.replace(max_reasoning_tokens=-1)
    with pytest.raises(InvalidInputError, match="servers: not a per-call setting"):
        settings.judging(servers=("http://a",))
    assert {"template", "max_reasoning_tokens", "reasoning_effort"} <= JUDGING_FIELDS
    assert "model" not in JUDGING_FIELDS


def test_the_same_reranker_from_python_environment_and_file(scripted_reranker, tmp_path, monkeypatch) -> None:
    backend = scripted_reranker.backend
    passages = [LEN_PASSAGE, SORTED_PASSAGE]
    python = Rank1Reranker(backend, Rank1Settings(max_reasoning_tokens=SCRIPTED_BUDGET, template="TRECCOVID"))
    config = write(tmp_path, f'max_reasoning_tokens = {SCRIPTED_BUDGET}\ntemplate = "TRECCOVID"\n')
    from_file = Rank1Reranker(backend, Rank1Settings.load(config))
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", str(SCRIPTED_BUDGET))
    monkeypatch.setenv("RANK1_TEMPLATE", "TRECCOVID")
    from_env = Rank1Reranker(backend)
    assert python.settings == from_file.settings == from_env.settings
    assert repr(python) == repr(from_file) == repr(from_env)
    judged = [r.judge(LEN_QUERY, passages) for r in (python, from_file, from_env)]
    assert judged[0] == judged[1] == judged[2]
    assert python.cache_key(LEN_QUERY, LEN_PASSAGE) == from_env.cache_key(LEN_QUERY, LEN_PASSAGE)


def test_from_settings_reaches_a_server_named_in_a_file(scripted_server, scripted_reranker, tmp_path) -> None:
    config = write(
        tmp_path,
        f'servers = ["{scripted_server.base_url}"]\nmodel = "{scripted_server.model}"\n'
        f"max_reasoning_tokens = {SCRIPTED_BUDGET}\nmax_retries = 1\n",
    )
    with Rank1Reranker.from_settings(Rank1Settings.load(config)) as remote:
        assert type(remote.backend).__name__ == "RemoteBackend"
        got = remote.judge(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE])
    want = scripted_reranker.judge(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE])
    assert [(j.relevant, j.reasoning) for j in got] == [(j.relevant, j.reasoning) for j in want]
    assert [j.score for j in got] == pytest.approx([j.score for j in want], abs=1e-4)


def test_an_embedded_engine_needs_a_model() -> None:
    with pytest.raises(InvalidInputError, match="model"):
        Rank1Reranker.from_settings(Rank1Settings())


def test_from_vllm_keeps_the_cache_choice_apart_from_engine_arguments(scripted_reranker, monkeypatch) -> None:
    from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

    loaded: list[dict[str, object]] = []

    def load(model: str, **engine_args: object) -> object:
        loaded.append(engine_args)
        return scripted_reranker.backend  # the session's engine: only the wiring is under test

    monkeypatch.setattr(VLLMEngineBackend, "load", staticmethod(load))
    without = Rank1Reranker.from_vllm("m", cache=False, max_reasoning_tokens=SCRIPTED_BUDGET, dtype="float32")
    assert without.cache is None
    assert "cache" not in loaded[-1]
    assert loaded[-1]["dtype"] == "float32"
    assert Rank1Reranker.from_vllm("m", max_reasoning_tokens=SCRIPTED_BUDGET).cache is not None
    assert Rank1Reranker.from_vllm("m", cache_entries=0, max_reasoning_tokens=SCRIPTED_BUDGET).cache is None
