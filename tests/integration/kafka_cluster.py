"""Three Kafka brokers of a test's own on loopback: KRaft, each a combined broker + controller, the
three forming the controller quorum (3 voters), with the replication a production cluster runs:
``default.replication.factor=3`` and ``min.insync.replicas=2`` for every topic, the internal ones
included. For the failover tests that kill -9 a broker: the shared stack's broker stays untouched.

The jars are the shared stack's (``.stack/kafka/libs``), started the way
``signwatch.stack.kafka`` starts its one broker, with small heaps (three JVMs share 2 cores).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path

from signwatch.stack.kafka import LOG4J_CONFIG, _random_cluster_id, java_binary
from signwatch.stack.paths import StackPaths, project_file
from tests.conftest import PROJECT, wait_until

# C1 only and the serial collector: a broker on loopback needs little, and three JVMs that JIT and
# collect on every core at once slowed the services under test on the 2-core CI machine.
HEAP = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1"]

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=3
auto.create.topics.enable=false

# what production runs: three copies of every partition, a write acknowledged (acks=all) once two hold it
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2

# a dead broker is fenced (its partitions get new leaders) within ~3 s instead of 9
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
group.initial.rebalance.delay.ms=0

# few threads: three brokers share 2 cores with the services under test
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
log.cleaner.enable=false
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class KafkaCluster:
    """``start()`` formats and starts the brokers and waits until all of them are registered;
    ``kill(node_id)`` is kill -9; ``stop()`` ends the ones still running."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        self.folder, self.size = folder, size
        ports = _free_ports(2 * size)
        self.ports = {i + 1: ports[2 * i] for i in range(size)}
        self.controller_ports = {i + 1: ports[2 * i + 1] for i in range(size)}
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports.values())
        self.processes: dict[int, subprocess.Popen] = {}
        self.java = java_binary()
        self.libs = StackPaths.of(PROJECT).kafka_libs
        if not (self.libs / "VERSION").is_file():
            raise RuntimeError(f"no Kafka jars in {self.libs}: run `signwatch stack up` once")

    def node_folder(self, node_id: int) -> Path:
        return self.folder / f"broker-{node_id}"

    def _write_config(self, node_id: int) -> Path:
        voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in self.controller_ports.items())
        folder = self.node_folder(node_id)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "server.properties"
        config.write_text(SERVER_PROPERTIES.format(
            node_id=node_id, voters=voters, port=self.ports[node_id],
            controller_port=self.controller_ports[node_id], data_dir=folder / "data"))
        return config

    def _java(self, node_id: int, *args: str) -> list[str]:
        log4j = project_file(StackPaths.of(PROJECT), LOG4J_CONFIG)
        return [self.java, *HEAP, "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.node_folder(node_id)}", "-cp", str(self.libs / "*"), *args]

    def start(self, timeout_s: float = 90) -> "KafkaCluster":
        cluster_id = _random_cluster_id()
        formats = {}
        for node_id in self.ports:  # a static quorum (controller.quorum.voters): no --standalone
            config = self._write_config(node_id)
            formats[node_id] = subprocess.Popen(
                self._java(node_id, "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
                           "--config", str(config)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node_id, proc in formats.items():
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"formatting broker {node_id} failed:\n{out[-3000:]}")
        for node_id in self.ports:
            self.start_node(node_id)
        wait_until(lambda: len(self.brokers()) == self.size, timeout_s, interval_s=0.5,
                   what=f"{self.size} Kafka brokers to register")
        return self

    def start_node(self, node_id: int) -> None:
        folder = self.node_folder(node_id)
        log = (folder / "server.log").open("ab")
        self.processes[node_id] = subprocess.Popen(
            self._java(node_id, "kafka.Kafka", str(folder / "server.properties")),
            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        log.close()

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        # its refused connections (a killed broker) go to a logger, not to stderr
        return AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000,
                            "logger": logging.getLogger("kafka_cluster")})

    def brokers(self) -> set[int]:
        """The brokers the cluster's metadata lists now (empty while none answers)."""
        for node_id, proc in self.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"broker {node_id} exited with {proc.returncode}:\n{self.log_tail(node_id)}")
        try:
            return set(self._admin().list_topics(timeout=2).brokers)
        except Exception:  # noqa: BLE001 - not up yet
            return set()

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the broker leading it (-1: none now)."""
        metadata = self._admin().list_topics(topic, timeout=5).topics[topic]
        if metadata.error is not None:
            raise AssertionError(f"{topic}: {metadata.error}")
        return {p: m.leader for p, m in metadata.partitions.items()}

    def replicas(self, topic: str) -> dict[int, tuple[list[int], list[int]]]:
        """Partition -> (replicas, in-sync replicas)."""
        metadata = self._admin().list_topics(topic, timeout=5).topics[topic]
        return {p: (list(m.replicas), list(m.isrs)) for p, m in metadata.partitions.items()}

    def topic_config(self, topic: str, name: str) -> str:
        from confluent_kafka.admin import ConfigResource

        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        admin = self._admin()
        [future] = admin.describe_configs([resource]).values()
        return future.result(timeout=10)[name].value

    def create_topic(self, topic: str, assignment: list[list[int]]) -> None:
        """A topic whose partition ``p`` has the replicas ``assignment[p]``, the first its leader."""
        from confluent_kafka.admin import NewTopic

        admin = self._admin()  # kept: the future fails once its client is collected
        [future] = admin.create_topics([NewTopic(topic, num_partitions=len(assignment),
                                                 replica_assignment=assignment)]).values()
        future.result(timeout=30)
        wait_until(lambda: all(leader >= 0 for leader in self.leaders(topic).values()), 30, interval_s=0.2,
                   what=f"{topic}'s partitions to have leaders")

    def kill(self, node_id: int) -> None:
        """kill -9: no controlled shutdown, no leadership handed over."""
        proc = self.processes.pop(node_id)
        proc.kill()
        proc.wait(10)

    def log_tail(self, node_id: int, chars: int = 3000) -> str:
        try:
            return (self.node_folder(node_id) / "server.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.processes.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
