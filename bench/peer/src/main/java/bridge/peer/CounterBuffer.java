package bridge.peer;

import com.mongodb.client.MongoCollection;
import java.util.Map;
import org.apache.kafka.streams.processor.StateStore;
import org.apache.kafka.streams.processor.StateStoreContext;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.internals.CacheFlushListener;
import org.apache.kafka.streams.state.internals.CachedStateStore;
import org.bson.Document;

/**
 * A task's view of its stream thread's {@link Aggregate}: the store Kafka Streams flushes before
 * it commits the task's offsets.
 *
 * <p>Kafka Streams calls a store's {@code flush()} only when it writes a checkpoint (under
 * exactly_once_v2: when the task closes), but {@code flushCache()} of every caching store in each
 * commit, before the offsets are committed; so the buffer is such a store ({@link
 * CachedStateStore}, an internal interface of kafka-streams: the peer is pinned to the broker's
 * version). Every call comes from the task's stream thread, hence the thread's aggregate.
 */
final class CounterBuffer implements StateStore, CachedStateStore<byte[], byte[]> {
    static final String NAME = "counter-buffer";
    private final ThreadLocal<Aggregate> perThread;
    private boolean open;

    CounterBuffer(ThreadLocal<Aggregate> perThread) {
        this.perThread = perThread;
    }

    /** Fold one record of this task in. */
    void add(String type, byte[] value, String mark, long offset) {
        perThread.get().add(type, value, mark, offset);
    }

    @Override
    public void flush() {
        perThread.get().flush();
    }

    @Override
    public void flushCache() {
        perThread.get().flush();
    }

    @Override
    public void clearCache() {}

    @Override
    public boolean setFlushListener(CacheFlushListener<byte[], byte[]> listener, boolean sendOldValues) {
        return false;
    }

    @Override
    public String name() {
        return NAME;
    }

    @Override
    public void init(StateStoreContext context, StateStore root) {
        // Nothing to restore: the buffer is empty after every commit, and Mongo holds the rest.
        context.register(root, (key, value) -> {});
        open = true;
    }

    @Override
    public void close() {
        open = false;
    }

    @Override
    public boolean persistent() {
        return false;
    }

    @Override
    public boolean isOpen() {
        return open;
    }

    static final class Builder implements StoreBuilder<CounterBuffer> {
        private final ThreadLocal<Aggregate> perThread;

        Builder(MongoCollection<Document> counters) {
            this.perThread = ThreadLocal.withInitial(() -> new Aggregate(counters));
        }

        @Override
        public CounterBuffer build() {
            return new CounterBuffer(perThread);
        }

        @Override
        public String name() {
            return NAME;
        }

        @Override
        public StoreBuilder<CounterBuffer> withCachingEnabled() {
            return this;
        }

        @Override
        public StoreBuilder<CounterBuffer> withCachingDisabled() {
            return this;
        }

        @Override
        public StoreBuilder<CounterBuffer> withLoggingEnabled(Map<String, String> config) {
            throw new UnsupportedOperationException("the buffer is emptied at every commit: nothing to log");
        }

        @Override
        public StoreBuilder<CounterBuffer> withLoggingDisabled() {
            return this;
        }

        @Override
        public Map<String, String> logConfig() {
            return Map.of();
        }

        @Override
        public boolean loggingEnabled() {
            return false;
        }
    }
}
