#!/usr/bin/env python3
"""HTTPS on Hermes' own port: certificates made with openssl here, clients that speak TLS
(Python's ssl, curl, openssl s_client, Prometheus 2.42), and hostile ones.

A root CA signs an intermediate that signs the server's certificate; the server's
certificate file holds both, and clients trust only the root, so every good handshake
shows that the whole chain is sent. A second root signs the client certificates that
client_ca_file asks for, and a third, unrelated, signs one that must be refused.

usage: tls.py PATH_TO_HERMES
Ends with the line "tls: N passed, N failed".
"""
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from blackbox import HERMES, Hermes, check_equal, debian_module, kept_alive_answers, read_to_end
from state import run_suite

debian_module("tls", "prometheus_client", "python3-prometheus-client")
from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway, pushadd_to_gateway  # noqa: E402
from prometheus_client.exposition import default_handler, tls_auth_handler  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = []
GOOD_SCRAPE_SECONDS = 5  # a good scraper is answered within this, whatever else goes on


def test(function):
    TESTS.append(function)
    return function


def openssl(*args, cwd, clock=()):
    """openssl, under faketime when `clock` is its arguments."""
    command = (["faketime", *clock] if clock else []) + ["openssl", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"
    return result.stdout


class Certificates:
    """Every file the tests use, made once in a temporary folder."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="hermes-tls-")
        self.root = self.authority("root")
        self.intermediate = self.leaf("intermediate", self.root, "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign")
        self.server = self.leaf("server", self.intermediate, "subjectAltName=DNS:localhost,IP:127.0.0.1")
        self.chain = self.path("server-chain.pem")
        with open(self.chain, "w") as out:
            for name in ("server.pem", "intermediate.pem"):
                with open(self.path(name)) as part:
                    out.write(part.read())
        self.client_root = self.authority("client-root")
        self.client = self.leaf("client", self.client_root, "extendedKeyUsage=clientAuth")
        self.stranger_root = self.authority("stranger-root")
        self.stranger = self.leaf("stranger", self.stranger_root, "extendedKeyUsage=clientAuth")
        self.other_key = self.key("other")

    def path(self, name):
        return os.path.join(self.folder, name)

    def key(self, name, algorithm=("EC", "ec_paramgen_curve:P-256")):
        openssl("genpkey", "-algorithm", algorithm[0], "-pkeyopt", algorithm[1], "-out", f"{name}.key", cwd=self.folder)
        return self.path(f"{name}.key")

    def authority(self, name):
        self.key(name)
        openssl("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={name}",
                cwd=self.folder)
        return name

    def leaf(self, name, issuer, extensions, days=20, clock=(), algorithm=("EC", "ec_paramgen_curve:P-256")):
        self.key(name, algorithm)
        with open(self.path(f"{name}.ext"), "w") as file:
            file.write(extensions + "\n")
        openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=self.folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext", cwd=self.folder, clock=clock)
        return name

    def expiry(self, name):
        """notAfter of a certificate, in seconds since the epoch."""
        text = openssl("x509", "-in", self.path(f"{name}.pem"), "-noout", "-enddate", cwd=self.folder).strip()
        return time.mktime(time.strptime(text.split("=", 1)[1].replace(" GMT", ""), "%b %d %H:%M:%S %Y")) - time.timezone

    def context(self, client=None):
        """A client context that trusts the server's root, with a client certificate if named."""
        context = ssl.create_default_context(cafile=self.path(f"{self.root}.pem"))
        if client:
            context.load_cert_chain(self.path(f"{client}.pem"), self.path(f"{client}.key"))
        return context

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


CERTS = None


class TlsHermes(Hermes):
    """A hermes whose HTTP port speaks TLS; its scrapes go over TLS with `client`'s certificate."""

    def __init__(self, client_ca=False, client=None, env=None, **kwargs):
        tls_env = {"HERMES_TLS_CERT_FILE": CERTS.chain, "HERMES_TLS_KEY_FILE": CERTS.path("server.key")}
        if client_ca:
            tls_env["HERMES_TLS_CLIENT_CA_FILE"] = CERTS.path(f"{CERTS.client_root}.pem")
        tls_env.update(env or {})
        self.context = CERTS.context(client)
        super().__init__(env=tls_env, **kwargs)

    def request(self, raw, context=None, timeout=GOOD_SCRAPE_SECONDS):
        with socket.create_connection((self.http_host, self.http_port), timeout=timeout) as plain:
            with (context or self.context).wrap_socket(plain, server_hostname=self.http_host) as sock:
                sock.sendall(raw if isinstance(raw, bytes) else raw.encode())
                return read_to_end(sock)

    def handshakes(self):
        return {result: self.metric(f'hermes_tls_handshakes_total{{result="{result}"}}') for result in ("ok", "failed", "timeout")}


def failed_handshake(hermes, context):
    """The error a client with `context` meets; fails when the request is answered."""
    try:
        answer = hermes.request("GET /metrics HTTP/1.0\r\n\r\n", context=context)
    except (ssl.SSLError, ConnectionError) as error:
        return error
    raise AssertionError(f"answered: {answer[:80]!r}")


def wait_until(condition, what, seconds=5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_error(env, config=None):
    """hermes' exit code and its last stderr line when it cannot start with `env`."""
    from blackbox import clean_env, write_config
    path = write_config(config or {"service_name": "tls"})
    try:
        base = {"HERMES_UDP_PORT": "0", "HERMES_HTTP_PORT": "0", "HERMES_UDP_ADDRESS": "127.0.0.1",
                "HERMES_HTTP_ADDRESS": "127.0.0.1"}
        result = subprocess.run([HERMES, path], env=clean_env(**base, **env), capture_output=True, text=True, timeout=10)
    finally:
        os.unlink(path)
    return result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


# ---- serving ------------------------------------------------------------------------------------

@test
def curl_gets_metrics_over_https_trusting_only_the_root():
    hermes = TlsHermes()
    try:
        hermes.push('{"metric_name": "plain_counter", "payload": {"value": 3}}')
        result = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", CERTS.path(f"{CERTS.root}.pem"),
                                 f"https://127.0.0.1:{hermes.http_port}/metrics"], capture_output=True, text=True)
        check_equal(result.returncode, 0, f"curl's exit code ({result.stderr})")
        assert "\nplain_counter 3\n" in result.stdout, result.stdout[:400]
        for name in ("localhost", "127.0.0.1"):  # the certificate's DNS name and IP address both verify
            result = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", CERTS.path(f"{CERTS.root}.pem"),
                                     "--resolve", f"localhost:{hermes.http_port}:127.0.0.1",
                                     f"https://{name}:{hermes.http_port}/-/healthy"], capture_output=True, text=True)
            check_equal((result.returncode, result.stdout), (0, "Hermes is Healthy.\n"), f"curl https://{name}")
        check_equal(hermes.metric("hermes_tls_certificate_expiry_timestamp_seconds"), CERTS.expiry("server"),
                    "the expiry of the served certificate")
        assert hermes.handshakes()["ok"] >= 4, hermes.handshakes()
    finally:
        hermes.close()


@test
def the_whole_chain_is_sent_and_only_tls12_with_ecdhe_and_aead_is_spoken():
    hermes = TlsHermes()
    try:
        def s_client(*args):
            return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{hermes.http_port}",
                                   "-CAfile", CERTS.path(f"{CERTS.root}.pem"), "-showcerts", *args],
                                  input="", capture_output=True, text=True, timeout=10)
        good = s_client("-tls1_2")
        check_equal(good.stdout.count("-----BEGIN CERTIFICATE-----"), 2, "certificates sent: the leaf and the intermediate")
        assert "Verify return code: 0 (ok)" in good.stdout, good.stdout[-600:]
        assert re.search(r"Cipher is ECDHE-ECDSA-(AES\d+-GCM|CHACHA20-POLY1305)", good.stdout), good.stdout[-600:]
        assert "Protocol  : TLSv1.2" in good.stdout, good.stdout[-600:]
        for refused in (["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"], ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"],
                        ["-tls1_2", "-cipher", "AES128-GCM-SHA256"]):
            result = s_client(*refused)
            assert "Cipher is (NONE)" in result.stdout or result.returncode != 0, f"{refused} was spoken: {result.stdout[-400:]}"
            assert "-----BEGIN CERTIFICATE-----" not in result.stdout, f"{refused} got as far as the certificate"
    finally:
        hermes.close()


@test
def an_rsa_key_is_served_with_ecdhe_rsa():
    CERTS.leaf("rsa", CERTS.intermediate, "subjectAltName=IP:127.0.0.1", algorithm=("RSA", "rsa_keygen_bits:2048"))
    chain = CERTS.path("rsa-chain.pem")
    with open(chain, "w") as out:
        for name in ("rsa.pem", "intermediate.pem"):
            with open(CERTS.path(name)) as part:
                out.write(part.read())
    hermes = TlsHermes(env={"HERMES_TLS_CERT_FILE": chain, "HERMES_TLS_KEY_FILE": CERTS.path("rsa.key")})
    try:
        result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{hermes.http_port}", "-tls1_2",
                                 "-CAfile", CERTS.path(f"{CERTS.root}.pem")],
                                input="", capture_output=True, text=True, timeout=10)
        assert re.search(r"Cipher is ECDHE-RSA-(AES\d+-GCM|CHACHA20-POLY1305)", result.stdout), result.stdout[-600:]
        assert "Verify return code: 0 (ok)" in result.stdout, result.stdout[-600:]
    finally:
        hermes.close()


@test
def plain_http_to_the_tls_port_is_closed_at_once():
    hermes = TlsHermes()
    try:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", hermes.http_port), timeout=GOOD_SCRAPE_SECONDS) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b""
        assert time.monotonic() - started < 1, "the answer took longer than a second"
        assert answer == b"" or answer[:1] == b"\x15", f"neither a close nor a TLS alert: {answer[:40]!r}"
        check_equal(hermes.handshakes()["failed"], 1, "handshakes failed")
        assert "TLS handshake failed" in hermes.read_log_line()
    finally:
        hermes.close()


# ---- client certificates ------------------------------------------------------------------------

@test
def client_ca_file_admits_its_clients_and_refuses_others_counted_and_logged():
    hermes = TlsHermes(client_ca=True, client=CERTS.client)
    try:
        check_equal(hermes.handshakes(), {"ok": 1.0, "failed": 0.0, "timeout": 0.0}, "a client with its certificate")
        failed_handshake(hermes, CERTS.context())  # no certificate
        line = hermes.read_log_line()
        assert 'msg="TLS handshake failed" client=127.0.0.1:' in line, line
        assert "error=" in line and "BEGIN" not in line and "PRIVATE" not in line, line
        failed_handshake(hermes, CERTS.context(CERTS.stranger))  # one from another CA
        handshakes = hermes.handshakes()
        check_equal((handshakes["failed"], handshakes["timeout"]), (2.0, 0.0), "refused handshakes")
        assert hermes.metric("hermes_http_requests_total{code=\"200\"}") >= 2  # the good client's scrapes only
    finally:
        hermes.close()


@test
def a_certificate_from_another_ca_is_logged_as_not_signed_by_a_trusted_ca():
    hermes = TlsHermes(client_ca=True, client=CERTS.client)
    try:
        failed_handshake(hermes, CERTS.context(CERTS.stranger))
        line = hermes.read_log_line()
        assert "certificate verification failed" in line and "not correctly signed by the trusted CA" in line, line
    finally:
        hermes.close()


# ---- pushes ---------------------------------------------------------------------------------------

PUSH_TOKEN = "s3cret-push-token"


def push_handler(token=None, client=None):
    """A push_to_gateway handler that trusts the test root and sends `token` as a bearer
    token: the library's tls_auth_handler with `client`'s certificate, else its
    default_handler with the root as the CA file OpenSSL reads by default."""
    root = CERTS.path(f"{CERTS.root}.pem")

    def handler(url, method, timeout, headers, data):
        headers = headers + ([("Authorization", f"Bearer {token}")] if token else [])
        if client:
            return tls_auth_handler(url, method, timeout, headers, data, CERTS.path(f"{client}.pem"),
                                    CERTS.path(f"{client}.key"), cafile=root)
        push = default_handler(url, method, timeout, headers, data)

        def handle():
            before = os.environ.get("SSL_CERT_FILE")
            os.environ["SSL_CERT_FILE"] = root
            try:
                push()
            finally:
                if before is None:
                    del os.environ["SSL_CERT_FILE"]
                else:
                    os.environ["SSL_CERT_FILE"] = before
        return handle
    return handler


def one_gauge(name, value):
    registry = CollectorRegistry()
    Gauge(name, "A pushed gauge.", registry=registry).set(value)
    return registry


def curl_push(hermes, method, path, body=None, token=PUSH_TOKEN, client=None):
    """curl --cacert's exit code and HTTP status for a push to hermes over https."""
    command = ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
               "--cacert", CERTS.path(f"{CERTS.root}.pem"), f"https://127.0.0.1:{hermes.http_port}{path}"]
    if body is not None:
        command += ["--data-binary", body]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    if client:
        command += ["--cert", CERTS.path(f"{client}.pem"), "--key", CERTS.path(f"{client}.key")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return result.returncode, int(result.stdout or 0)


def token_env(folder):
    path = os.path.join(folder, "push-token")
    with open(path, "w") as file:
        file.write(PUSH_TOKEN + "\n")
    return {"HERMES_PUSH_TOKEN_FILE": path}


@test
def push_to_gateway_and_curl_push_over_https_with_the_token():
    folder = tempfile.mkdtemp(prefix="hermes-tls-push-")
    hermes = TlsHermes(env=token_env(folder))
    gateway = f"https://127.0.0.1:{hermes.http_port}"
    try:
        push_to_gateway(gateway, job="nightly", registry=one_gauge("batch_done", 7), handler=push_handler(PUSH_TOKEN))
        pushadd_to_gateway(gateway, job="nightly", registry=one_gauge("batch_left", 2), handler=push_handler(PUSH_TOKEN))
        try:
            push_to_gateway(gateway, job="intruder", registry=one_gauge("batch_done", 1), handler=push_handler("wrong"))
            raise AssertionError("a push with a wrong token was taken")
        except urllib.error.HTTPError as error:
            check_equal(error.code, 401, "a wrong token")
        metrics = hermes.metrics()  # over https
        check_equal(metrics.get('batch_done{instance="",job="nightly"}'), 7, "PUT by push_to_gateway")
        check_equal(metrics.get('batch_left{instance="",job="nightly"}'), 2, "POST by pushadd_to_gateway")
        check_equal(metrics.get('batch_done{instance="",job="intruder"}'), None, "the refused push")
        check_equal(curl_push(hermes, "PUT", "/metrics/job/curl/instance/a", "curl_items 3\n"), (0, 200), "curl PUT")
        check_equal(curl_push(hermes, "POST", "/metrics/job/curl/instance/a", "curl_more 4\n"), (0, 200), "curl POST")
        check_equal(curl_push(hermes, "PUT", "/metrics/job/curl", "curl_items 5\n", token=None), (0, 401), "no token")
        metrics = hermes.metrics()
        check_equal((metrics.get('curl_items{instance="a",job="curl"}'), metrics.get('curl_more{instance="a",job="curl"}')),
                    (3, 4), "curl's pushes")
        check_equal(curl_push(hermes, "DELETE", "/metrics/job/curl/instance/a"), (0, 202), "curl DELETE")
        delete_from_gateway(gateway, job="nightly", handler=push_handler(PUSH_TOKEN))
        check_equal(hermes.metric("hermes_push_groups"), 0, "groups after the deletes")
        check_equal(hermes.metric('hermes_push_requests_total{method="PUT",code="401"}'), 2, "refused PUTs")
        check_equal(hermes.handshakes()["failed"], 0, "failed handshakes")
    finally:
        hermes.close()
        shutil.rmtree(folder, ignore_errors=True)


@test
def with_client_ca_file_a_push_without_a_client_certificate_is_refused_and_counted():
    folder = tempfile.mkdtemp(prefix="hermes-tls-push-")
    hermes = TlsHermes(client_ca=True, client=CERTS.client, env=token_env(folder))
    gateway = f"https://127.0.0.1:{hermes.http_port}"
    try:
        push_to_gateway(gateway, job="mutual", registry=one_gauge("batch_done", 1),
                        handler=push_handler(PUSH_TOKEN, client=CERTS.client))
        check_equal(curl_push(hermes, "PUT", "/metrics/job/curl", "curl_items 3\n", client=CERTS.client), (0, 200),
                    "curl with its certificate")
        failed = hermes.handshakes()["failed"]
        try:
            push_to_gateway(gateway, job="anonymous", registry=one_gauge("batch_done", 2), handler=push_handler(PUSH_TOKEN))
            raise AssertionError("a push without a client certificate was taken")
        except (urllib.error.URLError, ssl.SSLError, ConnectionError):
            pass
        code, status = curl_push(hermes, "PUT", "/metrics/job/anonymous", "curl_items 4\n")
        assert code != 0 and status == 0, f"curl without a certificate: exit {code}, status {status}"
        check_equal(hermes.handshakes()["failed"], failed + 2, "the two pushes without a certificate")
        assert 'msg="TLS handshake failed"' in hermes.read_log_line()
        metrics = hermes.metrics()
        check_equal((metrics.get('batch_done{instance="",job="mutual"}'), metrics.get('curl_items{instance="",job="curl"}')),
                    (1, 3), "the pushes with a certificate")
        check_equal(hermes.metric("hermes_push_groups"), 2, "no group for the refused pushes")
    finally:
        hermes.close()
        shutil.rmtree(folder, ignore_errors=True)


# ---- start-up and reloads -----------------------------------------------------------------------

@test
def start_up_errors_name_the_file_and_the_problem():
    missing = CERTS.path("missing.pem")
    cases = [
        ({"HERMES_TLS_CERT_FILE": missing, "HERMES_TLS_KEY_FILE": CERTS.path("server.key")},
         f"TLS certificate file {missing}: cannot read: No such file or directory"),
        ({"HERMES_TLS_CERT_FILE": CERTS.chain, "HERMES_TLS_KEY_FILE": CERTS.other_key},
         f"TLS key file {CERTS.other_key}: the key does not match the certificate in {CERTS.chain}"),
        ({"HERMES_TLS_CERT_FILE": CERTS.path("server.key"), "HERMES_TLS_KEY_FILE": CERTS.path("server.key")},
         f"TLS certificate file {CERTS.path('server.key')}: "),
        ({"HERMES_TLS_CERT_FILE": CERTS.chain},
         "HERMES_TLS_CERT_FILE and HERMES_TLS_KEY_FILE (tls_server.cert_file and key_file) go together"),
        ({"HERMES_TLS_CERT_FILE": CERTS.chain, "HERMES_TLS_KEY_FILE": CERTS.path("server.key"),
          "HERMES_TLS_CLIENT_CA_FILE": missing}, f"TLS CA file {missing}: cannot read: No such file or directory"),
    ]
    for env, message in cases:
        code, line = start_error(env)
        check_equal(code, 2, f"exit code for {message}")
        assert message in line, f"expected {message!r} in {line!r}"
    # A certificate that expired: made with the clock 40 days back, valid for 20.
    CERTS.leaf("expired", CERTS.intermediate, "subjectAltName=IP:127.0.0.1", days=20,
               clock=("-f", "-40d"))
    code, line = start_error({"HERMES_TLS_CERT_FILE": CERTS.path("expired.pem"), "HERMES_TLS_KEY_FILE": CERTS.path("expired.key")})
    check_equal(code, 2, "exit code for an expired certificate")
    assert re.search(rf"TLS certificate file {re.escape(CERTS.path('expired.pem'))}: the certificate expired on "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line), line


@test
def the_config_file_serves_tls_and_refuses_what_it_cannot_speak():
    config = {"service_name": "tls", "tls_server": {"cert_file": CERTS.chain, "key_file": CERTS.path("server.key"),
                                                    "min_version": "TLS12"}}
    hermes = TlsHermes(env={"HERMES_TLS_CERT_FILE": "", "HERMES_TLS_KEY_FILE": ""}, config=config)
    try:
        check_equal(hermes.handshakes()["ok"], 1.0, "a scrape over TLS from the config's files")
    finally:
        hermes.close()
    config["tls_server"]["min_version"] = "TLS10"
    code, line = start_error({}, config)
    check_equal(code, 2, "exit code")
    assert "tls_server.min_version: \"TLS10\" is not accepted: TLS12 is the only minimum" in line, line


@test
def sighup_takes_a_new_pair_and_keeps_the_old_one_when_the_new_one_is_bad():
    folder = tempfile.mkdtemp(prefix="hermes-tls-reload-")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    shutil.copy(CERTS.chain, cert)
    shutil.copy(CERTS.path("server.key"), key)
    hermes = TlsHermes(env={"HERMES_TLS_CERT_FILE": cert, "HERMES_TLS_KEY_FILE": key})
    try:
        check_equal(hermes.metric("hermes_tls_certificate_expiry_timestamp_seconds"), CERTS.expiry("server"), "first expiry")
        CERTS.leaf("rotated", CERTS.intermediate, "subjectAltName=IP:127.0.0.1", days=25)
        with open(cert, "w") as out:
            for name in ("rotated.pem", "intermediate.pem"):
                with open(CERTS.path(name)) as part:
                    out.write(part.read())
        shutil.copy(CERTS.path("rotated.key"), key)
        hermes.process.send_signal(signal.SIGHUP)
        wait_until(lambda: hermes.metric('hermes_config_reloads_total{result="success"}') == 1, "a reload")
        check_equal(hermes.metric("hermes_tls_certificate_expiry_timestamp_seconds"), CERTS.expiry("rotated"), "after rotation")
        served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", hermes.http_port)))
        with open(CERTS.path("rotated.pem")) as file:
            check_equal(served, ssl.PEM_cert_to_DER_cert(file.read()), "the certificate served after rotation")
        shutil.copy(CERTS.other_key, key)  # a key that does not match
        hermes.process.send_signal(signal.SIGHUP)
        wait_until(lambda: hermes.metric('hermes_config_reloads_total{result="failure"}') == 1, "a failed reload")
        check_equal(hermes.metric("hermes_tls_certificate_expiry_timestamp_seconds"), CERTS.expiry("rotated"), "kept")
        lines = [hermes.read_log_line() for _ in range(4)]
        assert any("TLS certificate reloaded" in line for line in lines), lines
        assert any("TLS certificate reload failed; the certificate in force stays" in line and
                   "the key does not match the certificate" in line for line in lines), lines
    finally:
        hermes.close()
        shutil.rmtree(folder, ignore_errors=True)


# ---- Prometheus ---------------------------------------------------------------------------------

@test
def prometheus_scrapes_over_https_with_a_ca_file_and_with_a_client_certificate():
    served, mutual = TlsHermes(), TlsHermes(client_ca=True, client=CERTS.client)
    folder = tempfile.mkdtemp(prefix="hermes-tls-prometheus-")
    prometheus = None
    try:
        for hermes, value in ((served, 5), (mutual, 6)):
            hermes.push(f'{{"metric_name": "plain_counter", "payload": {{"value": {value}}}}}')
        root = CERTS.path(f"{CERTS.root}.pem")
        jobs = [("https", served, f"ca_file: {root}"),
                ("mutual", mutual, f"ca_file: {root}, cert_file: {CERTS.path('client.pem')}, key_file: {CERTS.path('client.key')}"),
                ("mutual_without_certificate", mutual, f"ca_file: {root}")]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            web = f"127.0.0.1:{sock.getsockname()[1]}"
        with open(os.path.join(folder, "prometheus.yml"), "w") as file:
            file.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n")
            for job, hermes, tls in jobs:
                file.write(f"  - job_name: {job}\n    scheme: https\n    tls_config: {{{tls}}}\n"
                           f"    static_configs:\n      - targets: ['127.0.0.1:{hermes.http_port}']\n")
        prometheus = subprocess.Popen(["prometheus", f"--config.file={folder}/prometheus.yml",
                                       f"--storage.tsdb.path={folder}/data", f"--web.listen-address={web}", "--log.level=error"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def query(promql):
            url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return {r["metric"]["job"]: float(r["value"][1]) for r in json.load(response)["data"]["result"]}
            except OSError:
                return None
        expected_up = {"https": 1.0, "mutual": 1.0, "mutual_without_certificate": 0.0}
        wait_until(lambda: query("up") == expected_up, f"up to be {expected_up} (it is {query('up')})", seconds=30)
        wait_until(lambda: query("plain_counter") == {"https": 5.0, "mutual": 6.0}, "the pushed series", seconds=10)
        assert mutual.handshakes()["failed"] >= 1, mutual.handshakes()
    finally:
        if prometheus:
            prometheus.terminate()
            prometheus.wait(timeout=10)
        served.close()
        mutual.close()
        shutil.rmtree(folder, ignore_errors=True)


# ---- hostile clients ----------------------------------------------------------------------------

def client_hello():
    """The first flight of a TLS 1.2 handshake, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = CERTS.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    connection = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        connection.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def silent_connection(hermes):
    """A connection to hermes' port, connecting and then sending nothing."""
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", hermes.http_port))
    except BlockingIOError:
        pass
    return sock


SANITIZED = False  # set by run(): resident memory is checked only without AddressSanitizer


def good_clients_keep_being_served(hermes, seconds):
    """For `seconds`: datagrams pushed and all applied, and each scrape answered within
    GOOD_SCRAPE_SECONDS, while the caller's attack goes on."""
    deadline = time.monotonic() + seconds
    pushed = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        hermes.push('{"metric_name": "plain_counter", "payload": {}}')  # waits for it over a TLS scrape
        pushed += 1
        assert time.monotonic() - started < GOOD_SCRAPE_SECONDS, "a good scrape took longer than 5 s"
        time.sleep(0.2)
    check_equal(hermes.metric("plain_counter"), pushed, "datagrams applied during the attack")
    used, budget = hermes.metric("hermes_memory_used_bytes"), hermes.metric("hermes_memory_budget_bytes")
    assert used <= budget, f"{used} bytes used of a budget of {budget}"
    if not SANITIZED:  # AddressSanitizer's shadow memory and quarantine are not Hermes' own
        resident = hermes.metric("process_resident_memory_bytes")
        assert resident < budget, f"{resident} bytes resident, over the budget of {budget}"


@test
def a_thousand_silent_connections_garbage_and_a_slow_handshake_leave_good_clients_served():
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(limit[0], 4096), limit[1]), limit[1]))
    hermes = TlsHermes()
    silent, stop = [], threading.Event()
    hello = client_hello()

    def garbage():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", hermes.http_port), timeout=2) as sock:
                    sock.sendall(os.urandom(512))
                    sock.recv(100)
            except OSError:
                pass
            time.sleep(0.05)

    def one_byte_a_second():
        try:
            with socket.create_connection(("127.0.0.1", hermes.http_port), timeout=10) as sock:
                for byte in hello:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1)
        except OSError:
            pass  # hermes closed it: its read timeout

    attackers = [threading.Thread(target=garbage)] + [threading.Thread(target=one_byte_a_second) for _ in range(4)]
    try:
        for _ in range(1000):
            silent.append(silent_connection(hermes))
        for thread in attackers:
            thread.start()
        good_clients_keep_being_served(hermes, 8)
        stop.set()
        for thread in attackers:
            thread.join()
        handshakes = hermes.handshakes()
        assert handshakes["failed"] >= 10, f"garbage counted as failed handshakes: {handshakes}"
        assert handshakes["timeout"] >= 64, f"silent and slow connections counted as timeouts: {handshakes}"
        assert hermes.process.poll() is None, "hermes ended"
    finally:
        stop.set()
        for sock in silent:
            sock.close()
        hermes.close()


# A paced UDP sender in a process of its own: argv host, port, rate, seconds; prints the
# datagrams it sent and the seconds it took.
SENDER = """
import socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
datagram, total, sent = b'{"metric_name": "plain_counter", "payload": {}}', int(rate * seconds), 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    started = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 100)
        for _ in range(due - sent):
            sock.sendto(datagram, (host, port))
        sent = max(sent, due)
        time.sleep(0.0002)
    print(sent, time.monotonic() - started)
"""
STREAM_RATE, STREAM_SECONDS = 100_000, 4  # datagrams a second, for how long


def handshake_flood(hermes, stop, counts):
    """Until `stop`: threads that complete handshakes and close, threads that send a
    ClientHello, read the server's first flight (its signature, the costly part) and
    leave, and one that keeps 300 connections open with half a handshake (a ClientHello,
    or nothing), replacing a third of them every half second. The attackers run at nice
    19: the test's two cores are shared with them, and the CPU they need is not Hermes'
    to lose; what is measured is Hermes' own handshake work against its ingest."""
    hello = client_hello()

    def attacker(attack):
        def run():
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            while not stop.is_set():
                try:
                    attack()
                except OSError:
                    counts["refused"] += 1  # pushed out by newer connections, or closed at the read timeout
        return threading.Thread(target=run)

    def full_handshake():
        with socket.create_connection(("127.0.0.1", hermes.http_port), timeout=GOOD_SCRAPE_SECONDS) as plain:
            with hermes.context.wrap_socket(plain, server_hostname="127.0.0.1"):
                counts["completed"] += 1

    def first_flight():
        with socket.create_connection(("127.0.0.1", hermes.http_port), timeout=GOOD_SCRAPE_SECONDS) as sock:
            sock.sendall(hello)
            if sock.recv(65536):
                counts["first_flights"] += 1

    def half_open():
        held = []
        while not stop.is_set():
            while len(held) < 300:
                held.append(silent_connection(hermes))
                counts["half_open"] += 1
            time.sleep(0.1)
            for sock in held[:100:2]:
                try:
                    sock.send(hello)
                except OSError:
                    pass
            time.sleep(0.4)
            for sock in held[:100]:
                sock.close()
            del held[:100]
        for sock in held:
            sock.close()
    return [attacker(full_handshake) for _ in range(3)] + [attacker(first_flight) for _ in range(3)] + [attacker(half_open)]


@test
def a_handshake_flood_beside_a_100k_datagram_stream_applies_or_counts_every_datagram():
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(limit[0], 4096), limit[1]), limit[1]))
    hermes = TlsHermes()
    stop, counts = threading.Event(), {"completed": 0, "first_flights": 0, "refused": 0, "half_open": 0}
    flood, sender = handshake_flood(hermes, stop, counts), None
    try:
        before = hermes.metrics()
        for thread in flood:
            thread.start()
        time.sleep(0.5)  # the flood first
        sender = subprocess.Popen([sys.executable, "-c", SENDER, hermes.udp_host, str(hermes.udp_port), str(STREAM_RATE),
                                   str(STREAM_SECONDS)], stdout=subprocess.PIPE, text=True)
        slowest = 0.0
        while sender.poll() is None:
            started = time.monotonic()
            check_equal(hermes.request("GET /metrics HTTP/1.0\r\n\r\n").split("\r\n")[0], "HTTP/1.0 200 OK", "a scrape")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.2)
        sent, seconds = sender.stdout.read().split()
        sent, seconds = int(sent), float(seconds)
        stop.set()
        for thread in flood:
            thread.join()
        assert slowest < GOOD_SCRAPE_SECONDS, f"a scrape took {slowest:.1f} s"

        def taken():
            metrics = hermes.metrics()
            return (metrics["hermes_udp_packets_total"] - before["hermes_udp_packets_total"] +
                    metrics["hermes_udp_receive_drops_total"] - before["hermes_udp_receive_drops_total"])
        wait_until(lambda: taken() == sent, f"{sent} datagrams applied or counted as dropped (now {taken()})")
        after = hermes.metrics()
        applied = after["plain_counter"] - before.get("plain_counter", 0)
        check_equal(applied, after["hermes_udp_packets_total"] - before["hermes_udp_packets_total"], "every datagram taken applied")
        drops = after["hermes_udp_receive_drops_total"] - before["hermes_udp_receive_drops_total"]
        handshakes = hermes.handshakes()
        print(f"     {sent} datagrams at {sent / seconds:.0f}/s: {applied:.0f} applied, {drops:.0f} dropped and counted; "
              f"handshakes {handshakes}, client side {counts}; slowest scrape {slowest:.2f} s; hermes' CPU "
              f"{after['process_cpu_seconds_total'] - before['process_cpu_seconds_total']:.2f} s")
        assert handshakes["ok"] + handshakes["failed"] >= 100, f"the flood's handshakes: {handshakes}"
    finally:
        stop.set()
        if sender and sender.poll() is None:
            sender.kill()
            sender.wait()
        hermes.close()


@test
def renegotiation_is_refused_and_the_connection_goes_on_or_ends():
    hermes = TlsHermes()
    try:
        # s_client renegotiates on a line "R"; hermes answers with a no_renegotiation alert.
        script = "sleep 0.5; echo R; sleep 0.5; printf 'GET /-/healthy HTTP/1.0\\r\\n\\r\\n'; sleep 0.5"
        result = subprocess.run(f"({script}) | openssl s_client -connect 127.0.0.1:{hermes.http_port} -tls1_2 "
                                f"-CAfile {CERTS.path(CERTS.root + '.pem')}", shell=True, capture_output=True, text=True,
                                timeout=10)
        assert "RENEGOTIATING" in result.stdout + result.stderr, (result.stdout + result.stderr)[-400:]
        assert "no renegotiation" in result.stderr + result.stdout, (result.stdout + result.stderr)[-600:]
        good_clients_keep_being_served(hermes, 1)
        check_equal(hermes.handshakes()["failed"], 0.0, "failed handshakes: the first one succeeded")
    finally:
        hermes.close()


@test
def a_kept_alive_connection_carries_requests_on_one_handshake():
    hermes = TlsHermes()
    try:
        with socket.create_connection((hermes.http_host, hermes.http_port), timeout=GOOD_SCRAPE_SECONDS) as plain:
            with hermes.context.wrap_socket(plain, server_hostname=hermes.http_host) as sock:
                kept_alive_answers(sock)
        # One handshake for twelve requests; the scrape that reads the count makes the second.
        check_equal(hermes.handshakes(), {"ok": 2.0, "failed": 0.0, "timeout": 0.0}, "handshakes")
    finally:
        hermes.close()


def built_with_address_sanitizer(path):
    """Whether the binary carries AddressSanitizer's runtime (make sanitize's build)."""
    with open(path, "rb") as file:
        return b"__asan_init" in file.read()


def run():
    global CERTS, SANITIZED
    chosen = [t for t in TESTS if len(sys.argv) < 3 or sys.argv[2] in t.__name__]  # tls.py HERMES PART: names holding PART
    CERTS = Certificates()
    try:
        SANITIZED = os.access(HERMES, os.X_OK) and built_with_address_sanitizer(HERMES)
        return run_suite("tls", chosen)  # which fails at once when HERMES is not an executable
    finally:
        CERTS.close()


if __name__ == "__main__":
    sys.exit(run())
