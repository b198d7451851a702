package bridge.peer;

import com.mongodb.ConnectionString;
import com.mongodb.MongoClientSettings;
import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoClients;
import com.mongodb.client.MongoCollection;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.bson.Document;

/**
 * The Kafka Streams peer of the metrics projector: reads the event topics, folds each CloudEvent
 * (binary mode: ce_* headers, JSON value) into counter increments per unit and day, and adds them
 * to the same counter documents in its own database.
 *
 * <p>Usage: {@code java -jar streams-peer.jar --bootstrap H:P --topics a,b,c --mongo URL --db NAME
 * --app-id ID [--commit-ms 100] [--threads 1] [--max-poll-records 20000] [--linger-ms 120]
 * [--state-dir DIR]}. Prints {@code running} once the
 * streams run, then {@code applied <events> flushes <n> writes <n> skipped <n>} when they change.
 */
public final class StreamsPeer {
    private StreamsPeer() {}

    /** Folds every record of its task into the task's {@link CounterBuffer}. */
    static final class FoldProcessor implements Processor<byte[], byte[], Void, Void> {
        private ProcessorContext<Void, Void> context;
        private CounterBuffer buffer;
        private final Map<String, String> marks = new HashMap<>();

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            this.context = context;
            this.buffer = context.getStateStore(CounterBuffer.NAME);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            RecordMetadata meta = context.recordMetadata().orElseThrow();
            String tp = meta.topic() + "/" + meta.partition();
            String mark = marks.get(tp);
            if (mark == null) {
                mark = meta.topic().replace('.', '_') + "_" + meta.partition();
                marks.put(tp, mark);
            }
            Header type = record.headers().lastHeader("ce_type");
            if (type == null || record.value() == null) {
                Aggregate.SKIPPED.incrementAndGet();
                return;
            }
            buffer.add(new String(type.value(), StandardCharsets.UTF_8), record.value(), mark, meta.offset());
        }
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>(
                Map.of("--commit-ms", "100", "--threads", "1", "--max-poll-records", "20000", "--linger-ms", "120"));
        for (int i = 0; i + 1 < argv.length; i += 2) {
            a.put(argv[i], argv[i + 1]);
        }
        for (String required : new String[] {"--bootstrap", "--topics", "--mongo", "--db", "--app-id"}) {
            if (!a.containsKey(required)) {
                System.err.println("missing " + required);
                System.exit(2);
            }
        }
        MongoClient mongo = MongoClients.create(MongoClientSettings.builder()
                .applyConnectionString(new ConnectionString(a.get("--mongo")))
                .build());
        MongoCollection<Document> counters = mongo.getDatabase(a.get("--db")).getCollection("counts");

        Topology topology = new Topology();
        topology.addSource(
                "events", new ByteArrayDeserializer(), new ByteArrayDeserializer(), a.get("--topics").split(","));
        topology.addProcessor("fold", FoldProcessor::new, "events");
        topology.addStateStore(new CounterBuffer.Builder(counters), "fold");

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, a.get("--app-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("--bootstrap"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, a.get("--commit-ms"));
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, a.get("--threads"));
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "1");
        if (a.containsKey("--state-dir")) {
            p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("--state-dir"));
        }
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // The projector's fetch settings (services/metrics/metrics/app.py): a commit writes each counter
        // document its records touched once, so a backlog is drained in fetches of up to 20,000
        // records, and a steady stream is fetched after a 120 ms linger. Streams' defaults (1,000
        // records a poll and a partition's buffer) made about one Mongo write per event.
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), a.get("--max-poll-records"));
        p.put("buffered.records.per.partition", a.get("--max-poll-records")); // deprecated, still in force
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.FETCH_MAX_BYTES_CONFIG), String.valueOf(8 << 20));
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG), String.valueOf(2 << 20));
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.FETCH_MIN_BYTES_CONFIG), String.valueOf(8 << 20));
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), a.get("--linger-ms"));

        KafkaStreams streams = new KafkaStreams(topology, p);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                System.out.println("running");
                System.out.flush();
            } else if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            mongo.close();
            done.countDown();
        }));
        streams.start();
        Thread reporter = new Thread(() -> {
            String last = "";
            while (done.getCount() > 0) {
                String line = "applied " + Aggregate.APPLIED.get() + " flushes " + Aggregate.FLUSHES.get()
                        + " writes " + Aggregate.WRITES.get() + " skipped " + Aggregate.SKIPPED.get();
                if (!line.equals(last)) {
                    System.out.println(line);
                    System.out.flush();
                    last = line;
                }
                try {
                    Thread.sleep(50);
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
        reporter.setDaemon(true);
        reporter.start();
        done.await();
        System.exit(streams.state() == KafkaStreams.State.ERROR ? 1 : 0);
    }
}
