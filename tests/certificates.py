"""Test certificates made at run time with the openssl command: a CA, one
certificate per server (for 127.0.0.1 and localhost, usable to serve and
to connect), and a rogue CA with a certificate of its own."""
import os
import shutil
import subprocess

import pytest

OPENSSL = shutil.which("openssl")

LEAF_EXTENSIONS = """\
subjectAltName=IP:127.0.0.1,DNS:localhost
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
basicConstraints=critical,CA:FALSE
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
"""


def _openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _key_args():
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


class Authority:
    """A CA in ``directory``; ``issue(name)`` returns (cert, key) paths."""

    def __init__(self, directory, name="test CA"):
        if OPENSSL is None:
            pytest.skip("the openssl command is needed to make certificates")
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.certificate = os.path.join(self.directory, "ca.pem")
        _openssl("req", "-x509", *_key_args(), "-keyout", "ca.key",
                 "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=self.directory)
        with open(os.path.join(self.directory, "leaf.ext"), "w") as f:
            f.write(LEAF_EXTENSIONS)

    def issue(self, name):
        _openssl("req", *_key_args(), "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=self.directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out",
                 f"{name}.pem", "-days", "2", "-extfile", "leaf.ext",
                 cwd=self.directory)
        return (os.path.join(self.directory, f"{name}.pem"),
                os.path.join(self.directory, f"{name}.key"))

    def tls(self, name, **options):
        """A replication.tls.TLS for a server called ``name``."""
        from replication.tls import TLS
        certificate, key = self.issue(name)
        return TLS(certificate, key, self.certificate, **options)

    def config(self, name):
        """A <replication-ssl> section for a server called ``name``."""
        certificate, key = self.issue(name)
        return (f"<replication-ssl>\n"
                f"    certificate {certificate}\n"
                f"    key {key}\n"
                f"    authenticate {self.certificate}\n"
                f"  </replication-ssl>")
