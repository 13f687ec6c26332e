"""Configuration: the shipped file is valid and documents the defaults; every problem is
reported with its key path; the environment overrides the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config


def _problems(tmp_path: Path, text: str, environ: dict | None = None) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ=environ or {})
    return failure.value.problems


def test_shipped_config_is_valid_and_equals_the_defaults():
    shipped = load_config(DEFAULT_CONFIG_PATH, environ={})
    assert shipped == Config()


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    problems = _problems(tmp_path, """
http:
  port: seventy
scoring:
  value_matrix:
    current_weights:
      revenue: -1
      revenu: 0.3
    boundaries:
      current_value: 120
    industry_outlook:
      半导体: 2
timezone: Mars/Olympus
""")
    assert "http.port: must be a whole number" in problems
    assert "scoring.value_matrix.current_weights.revenue: must be a number >= 0" in problems
    assert "scoring.value_matrix.current_weights.revenu: unknown setting (misspelt?)" in problems
    assert "scoring.value_matrix.boundaries.current_value: must be a number <= 100" in problems
    assert "scoring.value_matrix.industry_outlook.半导体: must be a number <= 1" in problems
    assert "timezone: unknown time zone 'Mars/Olympus' (e.g. Asia/Shanghai)" in problems
    assert len(problems) == 6


def test_all_weights_zero_is_refused(tmp_path):
    zeros = "\n".join(f"      {k}: 0" for k in ("revenue", "gross_margin_12m", "contract_value",
                                                "repurchase_upsell", "margin_rate"))
    problems = _problems(tmp_path, f"scoring:\n  value_matrix:\n    current_weights:\n{zeros}\n")
    assert problems == ["scoring.value_matrix.current_weights: at least one weight must be > 0"]


def test_environment_overrides_and_names_itself_in_errors(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("http:\n  port: 9000\n", encoding="utf-8")
    config = load_config(path, environ={"TIERBOT_HTTP_PORT": "8181", "TIERBOT_DATABASE_URL": "postgresql://u@db/x"})
    assert (config.http.port, config.database.url) == (8181, "postgresql://u@db/x")
    problems = _problems(tmp_path, "", environ={"TIERBOT_HTTP_PORT": "0", "WECOM_ENCODING_AES_KEY": "short-secret"})
    assert "http.port (from TIERBOT_HTTP_PORT): must be a number >= 1" in problems
    assert any(p.startswith("wecom.encoding_aes_key (from WECOM_ENCODING_AES_KEY): must be the 43-character")
               for p in problems)
    assert not any("short-secret" in p for p in problems)
    # 43 characters, but not base64 of a key: refused here, not by the crypto library at start-up.
    problems = _problems(tmp_path, "", environ={"WECOM_ENCODING_AES_KEY": "!" * 43, "TIERBOT_DATABASE_URL": "sqlite:"})
    assert any(p.startswith("wecom.encoding_aes_key (from WECOM_ENCODING_AES_KEY): must be the 43-character")
               for p in problems)
    assert "database.url (from TIERBOT_DATABASE_URL): is not a database URL SQLAlchemy can read " \
           "(e.g. sqlite:///var/tierbot.db)" in problems


def test_broken_yaml_names_the_line(tmp_path):
    problems = _problems(tmp_path, "http:\n  port: [1,\n")
    assert len(problems) == 1 and "not valid YAML" in problems[0] and "config.yaml:" in problems[0]


def test_a_key_written_twice_is_an_error_not_the_last_one_silently(tmp_path):
    problems = _problems(tmp_path, "scoring:\n  value_matrix:\n    boundaries: {current_value: 60}\n"
                                   "http:\n  port: 8081\nscoring:\n  rules: {rules: []}\n")
    assert problems == [f"{tmp_path / 'config.yaml'}:6: not valid YAML: duplicate key 'scoring' (first on line 1)"]
    listed = _problems(tmp_path, "http:\n  ? [a, b]\n  : 1\n")
    assert listed == [f"{tmp_path / 'config.yaml'}:2: not valid YAML: a key must be a plain value, not a list or mapping"]
    nested = _problems(tmp_path, "timezone: Asia/Shanghai\nhttp:\n  port: 8081\n  port: 8082\n")
    assert nested == [f"{tmp_path / 'config.yaml'}:4: not valid YAML: duplicate key 'port' (first on line 3)"]


def test_a_list_whose_only_item_is_wrong_says_what_is_wrong_not_that_it_is_empty(tmp_path):
    problems = _problems(tmp_path, "scoring:\n  rfm:\n    segments:\n      - {name: all, r_min: 0, r_max: 7, "
                                   "f_min: 1, f_max: 5, m_min: 1, m_max: 5}\n")
    assert problems == ["scoring.rfm.segments.0.r_min: must be a number >= 1",
                        "scoring.rfm.segments.0.r_max: must be a number <= 5"]
    assert _problems(tmp_path, "scoring:\n  rfm:\n    segments: []\n") == ["scoring.rfm.segments: must not be empty"]


def test_scoring_fingerprint_changes_with_scoring_settings_only():
    base = Config()
    other_port = Config.model_validate({"http": {"port": 9999}})
    other_weight = Config.model_validate({"scoring": {"value_matrix": {"boundaries": {"current_value": 60}}}})
    assert base.scoring_hash() == other_port.scoring_hash() != other_weight.scoring_hash()


def test_wecom_credentials_come_all_together(tmp_path):
    complete = {"WECOM_CORP_ID": "ww1", "WECOM_AGENT_ID": "1000002", "WECOM_SECRET": "s3cret",
                "WECOM_TOKEN": "tok", "WECOM_ENCODING_AES_KEY": "k" * 43}
    assert load_config(None, environ=complete).wecom.has_credentials
    partial = {k: v for k, v in complete.items() if k not in ("WECOM_TOKEN", "WECOM_AGENT_ID")}
    problems = _problems(tmp_path, "", environ=partial)
    assert problems == ["wecom: some WeCom credentials are set but not all: also set WECOM_AGENT_ID, WECOM_TOKEN "
                        "(or unset them all for the sandbox)"]
    assert not any("s3cret" in p for p in problems)


def test_push_settings_are_checked_with_the_key_and_the_rule_named(tmp_path):
    problems = _problems(tmp_path, """
playbook:
  tasks:
    - name: vip_visit
      when: tierr == "star"
      action: {zh: 拜访, en: Visit}
      due_working_days: 3
pushes:
  quiet_hours: {start: "25:00", end: "08:00"}
scheduler:
  digest: "0 9 * *"
calendar:
  holidays: [2027-01-01]
  workdays: [2027-01-01]
""")
    assert """playbook: tasks[0] "vip_visit": unknown field 'tierr' (did you mean 'tier'?) at column 1""" in problems
    assert any(p.startswith("pushes.quiet_hours.start: must be a time of day") for p in problems)
    assert any(p.startswith("scheduler.digest: must be a cron expression") for p in problems)
    assert any(p.startswith("calendar: 2027-01-01 is listed under both") for p in problems)
    assert len(problems) == 4


def test_a_segment_title_that_cannot_be_typed_to_list_its_segment_is_refused(tmp_path):
    # 「我的明星客户」 lists the value matrix's Stars; "core" twice, in either language, reaches
    # only the first; 「我的重点的客户」 reads as 「重点」.
    problems = _problems(tmp_path, "scoring:\n  rfm:\n    segments:\n"
                                   "      - {name: champions, r_min: 4, f_min: 4, title: {zh: 明星, en: Core}}\n"
                                   "      - {name: loyal, r_min: 3, f_min: 4, title: {zh: core, en: Backbone}}\n"
                                   "      - {name: others, title: {zh: 重点的, en: Others}}\n")
    assert problems == [
        "scoring.rfm.segments.0.title (champions).zh: '明星' cannot be listed by its title: \"我的明星客户\" "
        "already means the my_tier command; choose another title",
        "scoring.rfm.segments.1.title (loyal).zh: 'core' cannot be listed by its title: \"我的core客户\" lists "
        "segment champions (scoring.rfm.segments.0.title (champions)): titles must differ; choose another title",
        "scoring.rfm.segments.2.title (others).zh: '重点的' cannot be listed by its title: \"我的重点的客户\" "
        "is not understood as a list; choose another title"]


def test_segment_titles_people_can_type_are_taken(tmp_path):
    # A built-in name kept in Chinese with a new English one; a Latin word before 客户; a title with 客户.
    titled = tmp_path / "titled.yaml"
    titled.write_text("scoring:\n  rfm:\n    segments:\n"
                      "      - {name: champions, r_min: 4, f_min: 4, title: {zh: 冠军客户, en: Top buyers}}\n"
                      "      - {name: loyal, r_min: 3, f_min: 4, title: {zh: VIP 客户, en: VIP}}\n"
                      "      - {name: others, title: {zh: 核心客户, en: Core}}\n", encoding="utf-8")
    config = load_config(titled, environ={})
    assert config.label_names()["rfm"]["loyal"] == {"zh": "VIP 客户", "en": "VIP"}
    from handlers.text import configured_label
    assert configured_label("vip") == ("rfm", "loyal") and configured_label("核心") == ("rfm", "others")


def test_the_weekly_tier_report_is_switched_off_with_a_bare_off(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("scheduler:\n  tier_report: off\n", encoding="utf-8")
    assert load_config(path, environ={}).scheduler.tier_report == "off"
    assert _problems(tmp_path, "scheduler:\n  tier_report: mondays\n")[0].startswith(
        "scheduler.tier_report: must be a cron expression")


def test_an_outbox_kept_shorter_than_what_looks_back_at_it_is_refused(tmp_path):
    assert _problems(tmp_path, "retention:\n  outbox_days: 7\n") == [
        "retention.outbox_days: must be 0 (keep for ever) or at least 14: the weekly tier report and the task "
        "cards' buttons look back at what was sent"]
    for days in (0, 14):
        path = tmp_path / f"keep-{days}.yaml"
        path.write_text(f"retention:\n  outbox_days: {days}\n", encoding="utf-8")
        assert load_config(path).retention.outbox_days == days
