"""Certificates for the local cluster's replication, made with the openssl
command: a CA of the cluster's own (its key stays in the cluster directory,
readable by this user only) and one certificate per server, for 127.0.0.1
and localhost, used both to serve replication and to replicate.

For a real site, make them with your own PKI (docs/security.md); this is
what ``zkzeo-cluster start`` does so that the local cluster is secure with
one command.
"""
import os
import shutil
import subprocess

LEAF_EXTENSIONS = """\
subjectAltName=IP:127.0.0.1,DNS:localhost
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
basicConstraints=critical,CA:FALSE
"""


class CertificatesUnavailable(Exception):
    """The openssl command is missing or failed."""


def _openssl(directory, *args):
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificatesUnavailable("the openssl command is not installed")
    result = subprocess.run([openssl, *args], cwd=directory,
                            capture_output=True, text=True)
    if result.returncode:
        raise CertificatesUnavailable(
            f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def _key_args():
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def make_authority(directory, days=3650):
    """The cluster's CA in ``directory``; returns the CA certificate path
    (an existing CA is kept)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    certificate = os.path.join(directory, "ca.pem")
    if not os.path.exists(certificate):
        _openssl(directory, "req", "-x509", *_key_args(), "-keyout",
                 "ca.key", "-out", "ca.pem", "-days", str(days), "-subj",
                 "/CN=zkzeo local cluster CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(os.path.join(directory, "ca.key"), 0o600)
    with open(os.path.join(directory, "leaf.ext"), "w") as f:
        f.write(LEAF_EXTENSIONS)
    return certificate


def issue(directory, name, days=3650):
    """(certificate, key) of server ``name``, signed by the CA in
    ``directory`` (made once)."""
    certificate = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    if not os.path.exists(certificate):
        _openssl(directory, "req", *_key_args(), "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA",
                 "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                 f"{name}.pem", "-days", str(days), "-extfile", "leaf.ext")
        os.chmod(key, 0o600)
    return certificate, key


def replication_ssl_section(directory, name):
    """The <replication-ssl> section of server ``name``."""
    certificate, key = issue(directory, name)
    return (f"  <replication-ssl>\n"
            f"    certificate {certificate}\n"
            f"    key {key}\n"
            f"    authenticate {os.path.join(directory, 'ca.pem')}\n"
            f"  </replication-ssl>\n")
