#!/usr/bin/env python3
"""A registry token server for cairn's tests (Docker token auth, RS256 JWTs).

The registry at CAIRN_TEST_REGISTRY_TOKEN answers 401 with
`WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service=...,
scope=...`; clients then fetch a token here:

  GET  /token?service=cairn-test&scope=repository:fixtures/busybox:pull
       with `Authorization: Basic base64(user:password)`
  POST /token  (OAuth2 form: grant_type=password, username, password,
       service, scope)

Valid credentials get `{"token": JWT, "access_token": JWT, "expires_in": N,
"issued_at": ...}` granting every requested scope; missing or wrong
credentials get 401, an unknown `service` gets 400. The JWT header carries the
signing certificate in `x5c`; the registry trusts it through its
`rootcertbundle`. Signatures are made by `openssl dgst -sha256 -sign`, so this
needs nothing but the Python standard library and openssl.

Usage: token-server.py --listen 127.0.0.1:5120 --key KEY --cert CERT
                       --issuer ISS --service SVC --user U --password P
"""

import argparse
import base64
import hmac
import json
import re
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der_b64(cert_path):
    """The first certificate of a PEM file, as standard base64 of its DER."""
    with open(cert_path) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----",
                  pem, re.S)
    if not m:
        raise SystemExit(f"token-server: no certificate in {cert_path}")
    return base64.b64encode(base64.b64decode("".join(m.group(1).split()))).decode()


def parse_scopes(values):
    """`repository:fixtures/busybox:pull,push` → access entries, merged by
    (type, name). A query may repeat `scope` and one value may hold several
    space-separated scopes."""
    merged = {}
    for value in values:
        for scope in value.split():
            typ, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep and sep2 and typ and name):
                raise ValueError(f"malformed scope {scope!r}")
            acts = merged.setdefault((typ, name), [])
            for a in actions.split(","):
                if a and a not in acts:
                    acts.append(a)
    return [{"type": t, "name": n, "actions": a} for (t, n), a in merged.items()]


class Issuer:
    def __init__(self, args):
        self.args = args
        self.x5c = cert_der_b64(args.cert)

    def token(self, subject, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": self.args.issuer,
            "sub": subject,
            "aud": self.args.service,
            "exp": now + self.args.ttl,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode())
                         + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.args.key],
            input=signing_input.encode(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, check=True).stdout
        return signing_input + "." + b64url(sig), now


class Handler(BaseHTTPRequestHandler):
    server_version = "cairn-token-server/1"
    issuer = None  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def reply(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, err, msg, headers=()):
        self.log_message("-> %d %s", code, msg)
        self.reply(code, {"error": err, "error_description": msg,
                          "errors": [{"code": err.upper(), "message": msg}]},
                   headers)

    def check_creds(self, user, password):
        a = self.issuer.args
        return (user is not None and password is not None
                and hmac.compare_digest(user.encode(), a.user.encode())
                and hmac.compare_digest(password.encode(), a.password.encode()))

    def basic_creds(self):
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None, None
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        return user, pw

    def issue(self, params, user, password):
        a = self.issuer.args
        service = params.get("service", [a.service])[0]
        if service != a.service:
            return self.error(400, "invalid_request", f"unknown service {service!r}")
        if not self.check_creds(user, password):
            return self.error(401, "unauthorized", "authentication required",
                              [("WWW-Authenticate", 'Basic realm="cairn-fixtures-token"')])
        try:
            access = parse_scopes(params.get("scope", []))
        except ValueError as e:
            return self.error(400, "invalid_scope", str(e))
        token, now = self.issuer.token(user, access)
        self.log_message("-> 200 token for %s: %s", user,
                         " ".join(f"{x['type']}:{x['name']}:{','.join(x['actions'])}"
                                  for x in access) or "(no scope)")
        self.reply(200, {"token": token, "access_token": token,
                         "expires_in": a.ttl,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime(now))})

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/token":
            return self.error(404, "not_found", f"no such path {url.path}")
        self.issue(parse_qs(url.query), *self.basic_creds())

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path != "/token":
            return self.error(404, "not_found", f"no such path {url.path}")
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        grant = form.get("grant_type", [""])[0]
        if grant != "password":
            return self.error(400, "unsupported_grant_type",
                              f"grant_type {grant!r} not supported (use password)")
        user, pw = self.basic_creds()
        if user is None:
            user = form.get("username", [None])[0]
            pw = form.get("password", [None])[0]
        self.issue(form, user, pw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--key", required=True, help="PEM RSA private key")
    ap.add_argument("--cert", required=True, help="PEM certificate of that key")
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ttl", type=int, default=300, help="token lifetime (s)")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    Handler.issuer = Issuer(args)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"token-server: listening on http://{args.listen}/token\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
