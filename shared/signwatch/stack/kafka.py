"""Apache Kafka in KRaft mode: one combined broker + controller on loopback.

Installed from Maven Central (``deploy/stack/kafka/pom.xml``) into ``.stack/kafka/libs``, formatted
once with ``kafka.tools.StorageTool format --standalone`` and started with ``kafka.Kafka``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template

from . import process
from .errors import StackError
from .paths import StackConfig, StackPaths, project_file

SERVICE = "kafka"
POM = "deploy/stack/kafka/pom.xml"
SERVER_TEMPLATE = "deploy/stack/kafka/server.properties.template"
LOG4J_CONFIG = "deploy/stack/kafka/log4j2.properties"
HEAP = ["-Xms256m", "-Xmx512m"]
MAVEN_TIMEOUT_S = 900


def kafka_version(paths: StackPaths) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", project_file(paths, POM).read_text())
    if not match:
        raise StackError(f"{POM} does not define <kafka.version>")
    return match.group(1).strip()


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError(
            "Kafka needs Java 17 or newer, and `java` is not on PATH "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    return found


def check_java(java: str) -> None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"cannot run {java} -version: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):
            major = int(match.group(2))
        if major < 17:
            raise StackError(f"Kafka 4 needs Java 17 or newer; {java} is Java {major}")


def installed(paths: StackPaths) -> bool:
    marker = paths.kafka_libs / "VERSION"
    return marker.is_file() and marker.read_text().strip() == kafka_version(paths)


def install(paths: StackPaths, echo: Callable[[str], None]) -> None:
    """Fetch the broker jars with Maven unless the cache already holds this version."""
    if installed(paths):
        return
    version = kafka_version(paths)
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            "installing Kafka needs Maven (`mvn`), which is not on PATH (Debian: apt-get install -y maven)"
        )
    java_binary()  # Maven needs it too; fail with the clearer message
    pom = project_file(paths, POM)
    staging = paths.kafka / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    echo(f"kafka: downloading Apache Kafka {version} from Maven Central into {paths.kafka_libs} ...")
    argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StackError(f"Maven did not finish within {MAVEN_TIMEOUT_S} s: {' '.join(argv)}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise StackError("Maven could not fetch Kafka:\n" + "\n".join("    " + line for line in output))
    if not list(staging.glob(f"kafka_2.13-{version}.jar")):
        raise StackError(f"Maven finished but kafka_2.13-{version}.jar is not in {staging}")
    (staging / "VERSION").write_text(version + "\n")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    staging.replace(paths.kafka_libs)


def _classpath(paths: StackPaths) -> str:
    return str(paths.kafka_libs / "*")


def _render_config(paths: StackPaths, config: StackConfig) -> None:
    paths.kafka.mkdir(parents=True, exist_ok=True)
    template = Template(project_file(paths, SERVER_TEMPLATE).read_text())
    paths.kafka_config.write_text(
        template.substitute(
            host=config.host,
            port=config.kafka_port,
            controller_port=config.kafka_controller_port,
            data_dir=str(paths.kafka_data),
        )
    )
    shutil.copyfile(project_file(paths, LOG4J_CONFIG), paths.kafka_log4j)


def _format(paths: StackPaths, config: StackConfig, java: str, echo: Callable[[str], None]) -> None:
    """Format the log directory once per (cluster, listener addresses)."""
    format_file = paths.kafka / "format.json"
    wanted = {"host": config.host, "port": config.kafka_port, "controller_port": config.kafka_controller_port}
    try:
        done = json.loads(format_file.read_text())
    except (FileNotFoundError, ValueError):
        done = None
    if done and {k: done.get(k) for k in wanted} == wanted and (paths.kafka_data / "meta.properties").is_file():
        return
    # the controller's address is written into the metadata log: a new address needs a new log
    shutil.rmtree(paths.kafka_data, ignore_errors=True)
    cluster_id = _random_cluster_id()
    echo(f"kafka: formatting storage (cluster id {cluster_id})")
    argv = [
        java, *HEAP, f"-Dlog4j2.configurationFile={paths.kafka_log4j}", "-cp", _classpath(paths),
        "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id, "--config", str(paths.kafka_config),
        "--standalone",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise StackError("kafka storage format failed:\n" + "\n".join("    " + line for line in output))
    format_file.write_text(json.dumps({**wanted, "cluster_id": cluster_id}) + "\n")


def _random_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def check_ports(config: StackConfig) -> None:
    process.require_free_ports(
        "kafka", config.host, [config.kafka_port, config.kafka_controller_port],
        "choose other ports with --kafka-port/--kafka-controller-port "
        "(SIGNWATCH_STACK_KAFKA_PORT/SIGNWATCH_STACK_KAFKA_CONTROLLER_PORT)",
    )


def start(paths: StackPaths, config: StackConfig, echo: Callable[[str], None]) -> process.ProcessRecord:
    java = java_binary()
    check_ports(config)
    _render_config(paths, config)
    _format(paths, config, java, echo)
    argv = [
        java, *HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dsignwatch.stack={paths.stack}",
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        "-Dlog4j2.shutdownHookEnabled=false",  # keep logging until the broker has shut down
        f"-Dkafka.logs.dir={paths.kafka}",
        "-cp", _classpath(paths), "kafka.Kafka", str(paths.kafka_config),
    ]
    return process.start(
        argv, pid_file=paths.pid_file(SERVICE), log_file=paths.kafka_log,
        marker=f"-Dsignwatch.stack={paths.stack}", cwd=paths.kafka,
    )


@contextlib.contextmanager
def _quiet_kafka_logging() -> Iterator[None]:
    """kafka-python logs every refused connection; while polling for readiness that is noise."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def probe(config: StackConfig, timeout_ms: int = 3000) -> bool:
    """True when the broker answers a metadata request."""
    if not process.port_open(config.host, config.kafka_port):
        return False
    from kafka import KafkaAdminClient

    with _quiet_kafka_logging():
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=config.kafka_bootstrap,
                client_id="signwatch-stack-probe",
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
            )
            admin.list_topics()
            return True
        except Exception:  # any failure just means "not ready yet"
            return False
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    admin.close()
