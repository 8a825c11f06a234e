from setuptools import setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="zkzeo",
    version="0.1.0.dev0",
    description="ZooKeeper-discovered, replicated ZODB storage clusters",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="ZPL-2.1",
    packages=["replication", "zkzeo"],
    package_data={"replication": ["component.xml"], "zkzeo": ["*.xml"]},
    python_requires=">=3.10",
    install_requires=[
        "ZODB>=6",
        "ZEO>=6",
        "transaction",
        "ZConfig",
        "zdaemon",
        "gevent",
        "kazoo",
        "zodburi",
        "prometheus_client",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "zope.testing", "manuel", "zc.buildout",
                 "sphinx", "myst-parser", "pure-sasl"],
        "sasl": ["pure-sasl"],     # SASL to ZooKeeper (kazoo's library)
    },
    entry_points={
        "console_scripts": [
            "zkzeo-runzeo = replication.runzeo:main",
            "zkrunzeo = zkzeo.server:main",
            "zkzeo = zkzeo.cli:main",
            "zkzeo-cluster = zkzeo.local:main",
        ],
        "zc.buildout": [
            "server = zkzeo.recipe:Server",
            "default = zkzeo.recipe:Server",
            "test = zkzeo.recipe:TestRunner",
        ],
        "zodburi.resolvers": [
            "zk = zkzeo.uri:resolve_zk",
            "zkzeo = zkzeo.uri:resolve_zk",
        ],
    },
    classifiers=[
        "Framework :: ZODB",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Zope Public License",
    ],
)
