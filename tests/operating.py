#!/usr/bin/env python3
"""What an operator of Hermes is given: the alerting rules (example/alerts.yml) and the
Grafana dashboard (example/dashboard.json). promtool (Debian's prometheus package)
checks the rules, and runs each group of tests/alerts_test.yml on its own: every rule
fires when it should, with its labels and annotations, and stays silent on a healthy
Hermes. That the dashboard's queries return data from a real Hermes is checked by
e2e_prometheus.py; here, its shape.

usage: operating.py [PATH_TO_HERMES]   (the argument is accepted and not needed)
Ends with the line "operating: N passed, N failed".
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

try:
    import yaml
except ImportError:  # run.sh must see a failure, not a missing summary
    print("operating: PyYAML is missing (apt-get install python3-yaml)", file=sys.stderr)
    print("operating: 0 passed, 1 failed")
    sys.exit(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALERTS = os.path.join(ROOT, "example", "alerts.yml")
ALERT_TESTS = os.path.join(ROOT, "tests", "alerts_test.yml")
DASHBOARD = os.path.join(ROOT, "example", "dashboard.json")
EXAMPLE_PROMETHEUS = os.path.join(ROOT, "example", "prometheus.yml")
EXAMPLE_COMPOSE = os.path.join(ROOT, "example", "docker-compose.yml")
SEVERITIES = {"critical", "warning"}


def load_yaml(path):
    with open(path) as file:
        return yaml.safe_load(file)


def rules():
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def promtool(*arguments):
    return subprocess.run(["promtool", *arguments], capture_output=True, text=True, timeout=60)


def run_rule_tests(groups, folder):
    """promtool test rules on a file holding just these test groups."""
    tests = load_yaml(ALERT_TESTS)
    tests["rule_files"] = [ALERTS]
    tests["tests"] = groups
    path = os.path.join(folder, "alerts_test.yml")
    with open(path, "w") as file:
        yaml.safe_dump(tests, file, sort_keys=False)
    return promtool("test", "rules", path)


# ---- the rules --------------------------------------------------------------------------------

def the_rules_check_clean(_):
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", ALERTS)
    count = len(rules())
    expected = f"Checking {ALERTS}\n  SUCCESS: {count} rules found\n\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), result


def every_rule_has_a_severity_a_summary_and_a_description(_):
    names = []
    for rule in rules():
        name = rule.get("alert")
        assert name and name.startswith("Hermes"), f"not an alert named Hermes*: {rule}"
        names.append(name)
        assert set(rule["labels"]) == {"severity"} and rule["labels"]["severity"] in SEVERITIES, rule
        assert set(rule["annotations"]) == {"summary", "description"}, rule
        for text in rule["annotations"].values():
            assert "$labels.instance" in text or "$labels.job" in text, \
                f"{name}: an annotation that names neither the instance nor the job: {text}"
    assert len(names) == len(set(names)), names


def every_rule_is_tested_firing_and_silent_when_healthy(_):
    tests = load_yaml(ALERT_TESTS)["tests"]
    firing, silent = set(), {}
    for group in tests:
        for case in group["alert_rule_test"]:
            if case["exp_alerts"]:
                firing.add(case["alertname"])
                for alert in case["exp_alerts"]:
                    assert alert["exp_labels"]["severity"] in SEVERITIES, (group["name"], alert)
                    assert set(alert["exp_annotations"]) == {"summary", "description"}, (group["name"], alert)
            elif group["name"] == "healthy":
                silent.setdefault(case["alertname"], set()).add(case["eval_time"])
    names = {rule["alert"] for rule in rules()}
    assert firing == names, f"never seen firing: {names - firing}; not rules: {firing - names}"
    assert set(silent) == names, f"not checked on a healthy Hermes: {names - set(silent)}"
    assert all(len(times) >= 3 for times in silent.values()), silent


def a_wrong_expectation_fails(folder):
    """The harness itself: one changed word in an expected annotation fails its group."""
    group = copy.deepcopy(next(group for group in load_yaml(ALERT_TESTS)["tests"] if group["name"] == "down"))
    case = next(case for case in group["alert_rule_test"] if case["exp_alerts"])
    case["exp_alerts"][0]["exp_annotations"]["summary"] += " now"
    result = run_rule_tests([group], folder)
    assert result.returncode == 1, result
    assert "FAILED" in result.stderr and "name: down," in result.stderr, result


def the_example_prometheus_loads_the_rules(_):
    result = promtool("check", "config", EXAMPLE_PROMETHEUS)
    assert result.returncode == 0 and result.stderr == "", result
    assert f"Checking {ALERTS}\n  SUCCESS: {len(rules())} rules found" in result.stdout, result.stdout
    # docker-compose.yml puts the rules beside prometheus.yml, where rule_files looks.
    assert load_yaml(EXAMPLE_PROMETHEUS)["rule_files"] == ["alerts.yml"]
    volumes = load_yaml(EXAMPLE_COMPOSE)["services"]["prometheus"]["volumes"]
    assert volumes == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                       "./alerts.yml:/etc/prometheus/alerts.yml:ro"], volumes


def rule_test_group(group):
    def check(folder):
        result = run_rule_tests([group], folder)
        expected = f"Unit Testing:  {os.path.join(folder, 'alerts_test.yml')}\n  SUCCESS\n\n"
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), \
            f"promtool said:\n{result.stdout}{result.stderr}"
    check.__name__ = "rule tests: " + group["name"]
    return check


# ---- the dashboard ----------------------------------------------------------------------------

def dashboard_panels():
    with open(DASHBOARD) as file:
        dashboard = json.load(file)
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel] + panel.get("panels", [])
    return dashboard, panels


def the_dashboard_has_its_variables(_):
    dashboard, _panels = dashboard_panels()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] == "hermes" and dashboard["id"] is None, dashboard
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "instance"], list(variables)
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    instance = variables["instance"]
    assert instance["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, instance
    assert instance["definition"] == instance["query"]["query"] == "label_values(hermes_build_info, instance)"
    # "All" is every instance the query found, never ".+": up and process_* are names
    # every exporter serves.
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] is None, instance


def every_panel_queries_the_chosen_datasource_and_instances(_):
    _dashboard, panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    queries = []
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), (panel["title"], refs)
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            expr = target["expr"]
            selectors = re.findall(r"\b[a-z_:]+\{([^}]*)\}", expr)
            assert selectors and all('instance=~"$instance"' in selector for selector in selectors), \
                f"{panel['title']}: a selector without the instance variable: {expr}"
            queries.append(expr)
    names = set(re.findall(r"\b((?:hermes|process|scrape)_[a-z_]+|up)\{", " ".join(queries)))
    wanted = {"up", "scrape_duration_seconds", "hermes_samples_accepted_total", "hermes_samples_rejected_total",
              "hermes_udp_receive_drops_total", "hermes_series", "hermes_config_reloads_total",
              "hermes_http_requests_total", "process_resident_memory_bytes", "hermes_memory_used_bytes",
              "hermes_memory_committed_bytes", "hermes_memory_budget_bytes", "hermes_metric_series", "hermes_metric_max_series"}
    assert wanted <= names, f"no panel shows {wanted - names}"


# ---- runner -----------------------------------------------------------------------------------

def main():
    if shutil.which("promtool") is None:
        print("operating: promtool is not installed (apt-get install prometheus)", file=sys.stderr)
        print("operating: 0 passed, 1 failed")
        return 1
    tests = [the_rules_check_clean, every_rule_has_a_severity_a_summary_and_a_description,
             every_rule_is_tested_firing_and_silent_when_healthy, a_wrong_expectation_fails,
             the_example_prometheus_loads_the_rules]
    try:
        tests += [rule_test_group(group) for group in load_yaml(ALERT_TESTS)["tests"]]
    except Exception:
        print(f"FAIL {ALERT_TESTS} does not load\n{traceback.format_exc()}")
        tests.append(None)
    tests += [the_dashboard_has_its_variables, every_panel_queries_the_chosen_datasource_and_instances]
    passed = failed = 0
    for function in tests:
        if function is None:
            failed += 1
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="hermes-operating-") as folder:
                function(folder)
            passed += 1
            print(f"ok   {function.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {function.__name__}\n{traceback.format_exc()}")
    print(f"operating: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
