"""Node configuration: flag beats environment beats default; bad values fail naming the setting."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import operator

import pytest

from gateway.config import NODE_SETTINGS, NodeConfig, add_node_arguments
from gateway.core.knowlarity import AudioContentType
from gateway.settings import SettingError

NODE = {"KGW_NODE_ID": "node-7"}  # the default depends on the host name


def _config(argv: list[str], env: dict[str, str]) -> NodeConfig:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return NodeConfig.from_args(parser.parse_args(argv), env)


def test_defaults_when_nothing_is_given():
    """With no flag and no environment, every setting takes its documented default."""
    c = _config([], dict(NODE))
    assert (c.listen, c.kafka, c.node_id, c.topic_prefix) == (
        "tcp:8080", "127.0.0.1:9092", "node-7", "knowlarity")
    assert c.paths == ("/vaani/knowlarity/setup-call-streams", "/knowlarity-stream")
    assert (c.auth_token, c.allow_from, c.metrics_listen) == ("", (), "tcp:9100")
    assert (c.max_frame_bytes, c.buffer_bytes, c.linger_ms) == (196608, 64 * 1024 * 1024, 10)
    assert (c.max_request_bytes, c.max_sockets, c.max_awaiting_start) == (16384, 200, 50)
    assert (c.max_write_buffer_bytes, c.playout_node_bytes) == (262144, 96 * 1024 * 1024)
    assert (c.buffer_call_share_bytes, c.allow_unauthenticated) == (4 * 1024 * 1024, False)
    assert (c.inbound_partitions, c.replication_factor, c.drain_timeout_s) == (12, 1, 30.0)
    s = c.call
    assert (s.start_timeout_s, s.ending_timeout_s, s.idle_timeout_s) == (10.0, 10.0, 60.0)
    assert (s.content_type, s.kill_audio_on_clear) == (AudioContentType.WAVE, False)
    p = s.playout
    assert (p.paced, p.clip_ms, p.lead_ms, p.max_call_bytes, p.max_markers) == (
        True, 200, 300, 2 * 1024 * 1024, 256)
    assert (s.max_frames_per_s, s.frame_burst, s.max_audio_speed) == (250.0, 1000, 3.0)
    assert (s.audio_burst_allowance_s, s.max_text_frames_per_s) == (10.0, 20.0)
    k = s.commands
    assert (k.max_play_bytes, k.max_name_chars, k.max_transfer_params) == (1024 * 1024, 128, 16)


# (attribute path on NodeConfig, argv, environment, expected value)
PRECEDENCE = [
    ("kafka", ["--kafka", "f:1"], {"KGW_KAFKA": "e:1"}, "f:1"),
    ("kafka", [], {"KGW_KAFKA": "e:1"}, "e:1"),
    ("kafka", [], {}, "127.0.0.1:9092"),
    ("node_id", ["--node-id", "from-flag"], {}, "from-flag"),
    ("call.start_timeout_s", ["--start-timeout-s", "2.5"], {"KGW_START_TIMEOUT_S": "7"}, 2.5),
    ("call.start_timeout_s", [], {"KGW_START_TIMEOUT_S": "7"}, 7.0),
    ("call.idle_timeout_s", ["--idle-timeout-s", "0"], {"KGW_IDLE_TIMEOUT_S": "5"}, 0.0),
    ("call.playout.paced", [], {"KGW_PLAYOUT_PACED": "off"}, False),
    ("call.playout.paced", ["--playout-paced", "yes"], {"KGW_PLAYOUT_PACED": "off"}, True),
    ("call.playout.lead_ms", [], {"KGW_PLAYOUT_LEAD_MS": "0"}, 0),
    ("call.playout.clip_ms", ["--playout-clip-ms", "40"], {}, 40),
    ("call.playout.max_call_bytes", [], {"KGW_PLAYOUT_MAX_CALL_BYTES": "5000"}, 5000),
    ("call.commands.max_play_bytes", ["--max-play-bytes", "10"], {}, 10),
    ("call.frame_burst", [], {"KGW_FRAME_BURST": "7"}, 7),
    ("allow_unauthenticated", [], {"KGW_ALLOW_UNAUTHENTICATED": "true"}, True),
    ("auth_token", [], {"KGW_AUTH_TOKEN": "  padded \n"}, "padded"),
    ("call.kill_audio_on_clear", [], {"KGW_KILL_AUDIO_ON_CLEAR": "1"}, True),
    ("call.content_type", [], {"KGW_AUDIO_CONTENT_TYPE": "raw"}, AudioContentType.RAW),
    ("call.ending_timeout_s", [], {"KGW_ENDING_TIMEOUT_S": "3"}, 3.0),
    ("auth_token", ["--auth-token", ""], {"KGW_AUTH_TOKEN": "secret"}, ""),
    ("auth_token", [], {"KGW_AUTH_TOKEN": "secret"}, "secret"),
    ("paths", [], {"KGW_PATHS": "/a/, /b/c"}, ("/a", "/b/c")),
    ("allow_from", [], {"KGW_ALLOW_FROM": "10.0.0.0/8, 192.168.1.7"},
     (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"))),
    ("buffer_bytes", ["--buffer-bytes", "8388608"], {"KGW_BUFFER_BYTES": "2048"}, 8388608),
    ("drain_timeout_s", [], {"KGW_DRAIN_TIMEOUT_S": "0"}, 0.0),
    ("metrics_listen", [], {"KGW_METRICS_LISTEN": ""}, ""),
]


@pytest.mark.parametrize(("attr", "argv", "env", "expected"), PRECEDENCE,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(PRECEDENCE)])
def test_flag_beats_environment_beats_default(attr, argv, env, expected):
    """A flag wins over the environment variable, which wins over the default."""
    config = _config(argv, {**NODE, **env})
    assert operator.attrgetter(attr)(config) == expected


# (argv, environment, flag and variable the message must name, where the value came from)
BAD = [
    ([], {"KGW_MAX_FRAME_BYTES": "lots"}, "--max-frame-bytes", "KGW_MAX_FRAME_BYTES"),
    ([], {"KGW_START_TIMEOUT_S": "0"}, "--start-timeout-s", "KGW_START_TIMEOUT_S"),
    (["--idle-timeout-s=-1"], {}, "--idle-timeout-s", "KGW_IDLE_TIMEOUT_S"),
    ([], {"KGW_AUDIO_CONTENT_TYPE": "mp3"}, "--audio-content-type", "KGW_AUDIO_CONTENT_TYPE"),
    ([], {"KGW_PLAYOUT_PACED": "maybe"}, "--playout-paced", "KGW_PLAYOUT_PACED"),
    ([], {"KGW_PLAYOUT_CLIP_MS": "0"}, "--playout-clip-ms", "KGW_PLAYOUT_CLIP_MS"),
    ([], {"KGW_PLAYOUT_LEAD_MS": "-5"}, "--playout-lead-ms", "KGW_PLAYOUT_LEAD_MS"),
    ([], {"KGW_PATHS": "no-slash"}, "--paths", "KGW_PATHS"),
    ([], {"KGW_PATHS": " , "}, "--paths", "KGW_PATHS"),
    (["--node-id", "bad id"], {}, "--node-id", "KGW_NODE_ID"),
    ([], {"KGW_TOPIC_PREFIX": "a/b"}, "--topic-prefix", "KGW_TOPIC_PREFIX"),
    ([], {"KGW_ALLOW_FROM": "300.1.1.1/8"}, "--allow-from", "KGW_ALLOW_FROM"),
    ([], {"KGW_KAFKA": "  "}, "--kafka", "KGW_KAFKA"),
    ([], {"KGW_START_TIMEOUT_S": "nan"}, "--start-timeout-s", "KGW_START_TIMEOUT_S"),
    ([], {"KGW_IDLE_TIMEOUT_S": "nan"}, "--idle-timeout-s", "KGW_IDLE_TIMEOUT_S"),
    ([], {"KGW_ENDING_TIMEOUT_S": "inf"}, "--ending-timeout-s", "KGW_ENDING_TIMEOUT_S"),
    ([], {"KGW_DRAIN_TIMEOUT_S": "-inf"}, "--drain-timeout-s", "KGW_DRAIN_TIMEOUT_S"),
]


@pytest.mark.parametrize(("argv", "env", "flag", "var"), BAD,
                         ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_value_fails_naming_flag_and_variable(argv, env, flag, var):
    """A value the gateway cannot use raises SettingError naming both the flag and the variable."""
    with pytest.raises(SettingError) as caught:
        _config(argv, {**NODE, **env})
    assert flag in str(caught.value)
    assert var in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [
        ([], {"KGW_LINGER_MS": "soon"}, "from KGW_LINGER_MS"),
        (["--linger-ms", "soon"], {"KGW_LINGER_MS": "5"}, "from --linger-ms"),
    ],
)
def test_bad_value_says_where_it_came_from(argv, env, source):
    """The error says whether the bad value came from the flag or the environment."""
    with pytest.raises(SettingError, match=source):
        _config(argv, {**NODE, **env})


def test_setting_error_is_a_value_error():
    """SettingError is a ValueError, so callers that catch ValueError see it."""
    assert issubclass(SettingError, ValueError)


@pytest.mark.parametrize(
    ("prefix", "node_id", "inbound", "outbound", "commands"),
    [
        ("knowlarity", "node-7", "knowlarity.calls.inbound", "knowlarity.calls.outbound",
         "knowlarity.calls.commands.node-7"),
        ("acme.prod", "gw_2", "acme.prod.calls.inbound", "acme.prod.calls.outbound",
         "acme.prod.calls.commands.gw_2"),
    ],
)
def test_topic_names_follow_prefix_and_node_id(prefix, node_id, inbound, outbound, commands):
    """The config names the inbound, outbound and this node's own commands topic."""
    c = _config(["--topic-prefix", prefix], {"KGW_NODE_ID": node_id})
    assert (c.inbound_topic, c.outbound_topic, c.commands_topic) == (inbound, outbound, commands)
    direct = NodeConfig(topic_prefix=prefix, node_id=node_id)
    assert (direct.inbound_topic, direct.outbound_topic, direct.commands_topic) == (
        inbound, outbound, commands)


def test_config_is_frozen():
    """The configuration tree is immutable once loaded."""
    c = _config([], dict(NODE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.kafka = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.call.idle_timeout_s = 1.0  # type: ignore[misc]


def test_every_setting_has_its_own_flag_and_variable():
    """No two settings share a flag or an environment variable, and every variable is KGW_."""
    flags = [s.flag for s in NODE_SETTINGS]
    envs = [s.env for s in NODE_SETTINGS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert all(e.startswith("KGW_") for e in envs)


def test_token_file_is_read_trimmed_and_wins_over_the_flag(tmp_path):
    """--auth-token-file is read once at start, trimmed, and takes the place of --auth-token."""
    f = tmp_path / "token"
    f.write_text("  from-file\n")
    c = _config(["--auth-token", "flag"], {**NODE, "KGW_AUTH_TOKEN_FILE": str(f)})
    assert c.auth_token == "from-file"
    assert not c.protected_mode


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_missing_or_empty_token_file_fails_naming_the_setting(tmp_path, content):
    """A token file that cannot be read or holds nothing stops the node at start, naming it."""
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
    with pytest.raises(SettingError, match="--auth-token-file / KGW_AUTH_TOKEN_FILE") as e:
        _config([], {**NODE, "KGW_AUTH_TOKEN_FILE": str(f)})
    assert str(tmp_path) not in str(e.value) or content is None


# (argv, names the message must hold)
INCOMPATIBLE = [
    (["--playout-clip-ms", "3000"], ("--playout-clip-ms", "--max-write-buffer-bytes")),
    (["--max-write-buffer-bytes", "1000"], ("--playout-clip-ms", "--max-write-buffer-bytes")),
    (["--buffer-call-share-bytes", "100", "--buffer-bytes", "50"],
     ("--buffer-call-share-bytes", "--buffer-bytes")),
    (["--playout-max-call-bytes", "100", "--playout-node-bytes", "50"],
     ("--playout-max-call-bytes", "--playout-node-bytes")),
]


@pytest.mark.parametrize(("argv", "names"), INCOMPATIBLE)
def test_settings_that_cannot_work_together_fail_at_start(argv, names):
    """A playAudio frame larger than the write-buffer bound, or a share above its whole, is
    refused at start with a message naming both settings."""
    with pytest.raises(SettingError) as e:
        _config(argv, dict(NODE))
    assert all(n in str(e.value) for n in names)


@pytest.mark.parametrize(("env", "allowed", "protected"), [
    ({}, ("127.0.0.0/8", "::1/128"), True),
    ({"KGW_ALLOW_UNAUTHENTICATED": "yes"}, (), False),
    ({"KGW_AUTH_TOKEN": "t"}, (), False),
    ({"KGW_ALLOW_FROM": "10.1.0.0/16"}, ("10.1.0.0/16",), False),
    ({"KGW_ALLOW_FROM": "10.1.0.0/16", "KGW_AUTH_TOKEN": "t"}, ("10.1.0.0/16",), False),
])
def test_with_no_token_and_no_allow_list_only_loopback_may_connect(env, allowed, protected):
    """Secure by default: loopback only, unless a token, an allow-list or
    --allow-unauthenticated says otherwise."""
    c = _config([], {**NODE, **env})
    assert tuple(str(n) for n in c.allowed_networks) == allowed
    assert c.protected_mode is protected


def test_every_setting_lands_at_its_path_in_the_config():
    """Each setting given a non-default value changes exactly its own place in the tree."""
    from gateway.config import NODE_SETTINGS
    from gateway.settings import as_text

    base = _config([], dict(NODE))
    odd = {"audio_content_type": "raw", "paths": "/x", "allow_from": "10.9.0.0/16",
           "kafka": "k:1", "listen": "tcp:1", "topic_prefix": "p", "metrics_listen": "",
           "auth_token": "t", "log_format": "json", "log_level": "debug",
           # Kafka access: files are only read for the protocol that uses them.
           "kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256",
           "kafka_sasl_username": "u", "kafka_sasl_password_file": "/p",
           "kafka_oauth_token_file": "/t", "kafka_ssl_ca_file": "/ca",
           "kafka_ssl_cert_file": "/c", "kafka_ssl_key_file": "/k",
           "kafka_ssl_key_password_file": "/kp", "compression": "lz4"}
    for s in NODE_SETTINGS:
        if s.name in ("node_id", "auth_token_file"):
            continue
        current = operator.attrgetter(s.target)(base)
        if s.name in odd:
            text = odd[s.name]
        elif isinstance(current, bool):
            text = as_text(not current)
        else:
            text = as_text(current * 2 if current else 1)
        env = {**NODE, s.env: text}
        if s.name == "buffer_call_share_bytes":
            env["KGW_BUFFER_BYTES"] = str(10 * 1024 * 1024 * 1024)
        if s.name == "playout_max_call_bytes":
            env["KGW_PLAYOUT_NODE_BYTES"] = str(10 * 1024 * 1024 * 1024)
        if s.name == "min_insync_replicas":
            env["KGW_REPLICATION_FACTOR"] = "5"
        if s.name in ("playout_clip_ms", "audio_content_type"):
            env["KGW_MAX_WRITE_BUFFER_BYTES"] = str(64 * 1024 * 1024)
        changed = _config([], env)
        assert operator.attrgetter(s.target)(changed) != current, s.name


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--listen", "tcp:abc", "is not a Twisted server endpoint"),
    ("--listen", "tpc:8080", "Unknown endpoint type"),
    ("--listen", "ssl:8443:privateKey=/nonexistent/key.pem", "No such file"),
    ("--metrics-listen", "unix", "is not a Twisted server endpoint"),
])
def test_a_bad_endpoint_fails_when_settings_are_read_naming_the_flag(
        flag: str, value: str, words: str) -> None:
    with pytest.raises(SettingError, match=f"{flag} / .*{words}"):
        _config([flag, value], dict(NODE))


def test_good_endpoints_and_an_empty_metrics_endpoint_are_taken() -> None:
    c = _config(["--listen", "haproxy:tcp:8080:interface=127.0.0.1", "--metrics-listen", ""],
                dict(NODE))
    assert (c.listen, c.metrics_listen) == ("haproxy:tcp:8080:interface=127.0.0.1", "")
