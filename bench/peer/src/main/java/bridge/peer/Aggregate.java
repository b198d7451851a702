package bridge.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.mongodb.MongoBulkWriteException;
import com.mongodb.bulk.BulkWriteError;
import com.mongodb.bulk.BulkWriteResult;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.model.BulkWriteOptions;
import com.mongodb.client.model.InsertManyOptions;
import com.mongodb.client.model.Projections;
import com.mongodb.client.model.UpdateOneModel;
import com.mongodb.client.model.WriteModel;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;
import org.bson.Document;

/**
 * The counter increments of every record a stream thread processed since its last commit: what
 * the thread's {@link CounterBuffer}s (one per task) fold into and flush.
 *
 * <p>One aggregate per thread, not per task: a task reads one partition of each topic, and visits
 * to every unit and day land in every partition, so per-task buffers would write each counter
 * document once per task and commit (six times, with the topics' six partitions). Sharing is safe
 * because a flush writes everything the thread processed so far, a superset of the records whose
 * offsets the commit that follows covers, and the watermarks below make a record written twice
 * count once.
 *
 * <p>Kafka Streams' exactly_once_v2 makes the offsets and the Kafka state transactional, not a
 * write to Mongo: a flush that reached Mongo before a failed commit is replayed. So every counter
 * document keeps, like the projector's, a watermark per partition ({@code wm.<topic>_<partition>}):
 * the highest offset it includes. An update adds a flush's events only where the document's
 * watermarks are below the flush's first offsets, and raises them in the same atomic update; one
 * that misses (the document saw part of a replayed range) re-reads its watermarks and adds exactly
 * the events after them, from the raw records kept until the flush.
 */
final class Aggregate {
    static final AtomicLong APPLIED = new AtomicLong();
    static final AtomicLong WRITES = new AtomicLong();
    static final AtomicLong FLUSHES = new AtomicLong();
    static final AtomicLong SKIPPED = new AtomicLong();
    // Statements per update command, as the projector's UPDATES_PER_COMMAND (FerretDB may not answer 100).
    private static final int PER_COMMAND = 50;
    private static final int MAX_EXACT_ROUNDS = 5;
    private static final ObjectMapper JSON = new ObjectMapper();

    /** A record as read, kept for the exact path. */
    private record Raw(String type, byte[] value, String mark, long offset) {}

    private final MongoCollection<Document> counters;
    private final Map<String, Map<String, Long>> sums = new LinkedHashMap<>();
    private final Map<String, Set<String>> marksOf = new HashMap<>();
    private final Map<String, long[]> range = new HashMap<>(); // mark -> {first, last}
    private final List<Raw> raws = new ArrayList<>();
    private final Set<String> existing = new HashSet<>();

    Aggregate(MongoCollection<Document> counters) {
        this.counters = counters;
    }

    /** Fold one record in. */
    void add(String type, byte[] value, String mark, long offset) {
        long[] r = range.get(mark);
        if (r == null) {
            range.put(mark, new long[] {offset, offset});
        } else if (offset <= r[1]) {
            // Replayed after a task was closed dirty before this aggregate was flushed: in already.
            return;
        } else {
            r[1] = offset;
        }
        raws.add(new Raw(type, value, mark, offset));
        try {
            Fold.fold(type, JSON.readTree(value), (path, day, changes, team) -> {
                for (String id : targets(path, day, team)) {
                    addTo(id, mark, changes);
                }
            });
        } catch (IOException | RuntimeException e) {
            // The projector dead-letters what it cannot decode; the peer skips it.
            SKIPPED.incrementAndGet();
        }
    }

    /**
     * The counter documents one emitted change goes to, as metrics.projection.CounterSums.emit: the
     * unit's day (or state) document, its all-time one for a dated change, and the team's day.
     */
    private static List<String> targets(JsonNode path, String day, String team) {
        if (path == null || path.isNull() || path.isEmpty()) {
            return List.of();
        }
        String unit = path.get(path.size() - 1).asText();
        List<String> out = new ArrayList<>(3);
        if (team != null) {
            // Team rows of a report are always for a period: a team has no all-time document.
            out.add("team:" + team + "|" + (day == null ? Fold.STATE_DAY : day));
        }
        if (day == null) {
            out.add(unit + "|" + Fold.STATE_DAY);
        } else {
            out.add(unit + "|" + day);
            out.add(unit + "|all");
        }
        return out;
    }

    private void addTo(String docId, String mark, List<Fold.Change> changes) {
        Map<String, Long> fields = sums.computeIfAbsent(docId, k -> new HashMap<>());
        marksOf.computeIfAbsent(docId, k -> new HashSet<>(4)).add(mark);
        for (Fold.Change c : changes) {
            if (c.delta() != 0) {
                fields.merge(c.field(), c.delta(), Long::sum);
            }
        }
    }

    /** Write everything folded since the last flush; returns once Mongo has it all. */
    void flush() {
        if (raws.isEmpty()) {
            return;
        }
        createMissing();
        List<String> ids = new ArrayList<>(sums.keySet());
        Map<String, Document> guards = new HashMap<>();
        for (String id : ids) {
            Document guard = new Document();
            for (String mark : marksOf.get(id)) {
                guard.append("wm." + mark, new Document("$not", new Document("$gte", range.get(mark)[0])));
            }
            guards.put(id, guard);
        }
        Set<String> missed = update(ids, sums, guards);
        for (int round = 0; !missed.isEmpty(); round++) {
            if (round == MAX_EXACT_ROUNDS) {
                throw new IllegalStateException("counter watermarks kept moving; another writer has these partitions");
            }
            missed = exact(missed);
        }
        APPLIED.addAndGet(raws.size());
        FLUSHES.incrementAndGet();
        sums.clear();
        marksOf.clear();
        range.clear();
        raws.clear();
    }

    /** Plain {_id, unit, day} documents for those not known to exist, so updates need no upsert. */
    private void createMissing() {
        List<Document> skeletons = new ArrayList<>();
        for (String id : sums.keySet()) {
            if (!existing.contains(id)) {
                int bar = id.lastIndexOf('|');
                String owner = id.substring(0, bar);
                Document skeleton = owner.startsWith("team:")
                        ? new Document("_id", id).append("team", owner.substring(5))
                        : new Document("_id", id).append("unit", owner);
                skeletons.add(skeleton.append("day", id.substring(bar + 1)));
            }
        }
        if (skeletons.isEmpty()) {
            return;
        }
        try {
            counters.insertMany(skeletons, new InsertManyOptions().ordered(false));
        } catch (MongoBulkWriteException e) {
            for (BulkWriteError err : e.getWriteErrors()) {
                if (err.getCode() != 11000) {
                    throw e;
                }
            }
        }
        WRITES.incrementAndGet();
        for (Document d : skeletons) {
            existing.add(d.getString("_id"));
        }
    }

    /** Guarded $inc + $max of the watermarks; returns the documents of commands that matched short. */
    private Set<String> update(List<String> ids, Map<String, Map<String, Long>> changes, Map<String, Document> guards) {
        Set<String> missed = new HashSet<>();
        for (int i = 0; i < ids.size(); i += PER_COMMAND) {
            List<String> chunk = ids.subList(i, Math.min(ids.size(), i + PER_COMMAND));
            List<WriteModel<Document>> models = new ArrayList<>(chunk.size());
            for (String id : chunk) {
                Document filter = new Document("_id", id);
                filter.putAll(guards.get(id));
                Document max = new Document();
                for (String mark : marksOf.get(id)) {
                    max.append("wm." + mark, range.get(mark)[1]);
                }
                Document update = new Document("$max", max);
                Map<String, Long> inc = changes.getOrDefault(id, Map.of());
                if (!inc.isEmpty()) {
                    update.append("$inc", new Document(new HashMap<String, Object>(inc)));
                }
                models.add(new UpdateOneModel<>(filter, update));
            }
            BulkWriteResult result = counters.bulkWrite(models, new BulkWriteOptions().ordered(false));
            WRITES.addAndGet(chunk.size());
            if (result.getMatchedCount() < chunk.size()) {
                existing.removeAll(chunk);
                missed.addAll(chunk);
            }
        }
        return missed;
    }

    /** Add to each of ``docs`` exactly the buffered events after its watermarks. */
    private Set<String> exact(Set<String> docs) {
        createMissing();
        Map<String, Map<String, Long>> marks = new HashMap<>();
        for (String id : docs) {
            Document d = counters.find(new Document("_id", id)).projection(Projections.include("wm")).first();
            Map<String, Long> m = new HashMap<>();
            if (d != null && d.get("wm") instanceof Document wm) {
                wm.forEach((k, v) -> m.put(k, ((Number) v).longValue()));
            }
            marks.put(id, m);
        }
        Map<String, Map<String, Long>> todo = new HashMap<>();
        for (String id : docs) {
            todo.put(id, new HashMap<>());
        }
        for (Raw raw : raws) {
            JsonNode data;
            try {
                data = JSON.readTree(raw.value());
            } catch (IOException e) {
                continue;
            }
            Fold.fold(raw.type(), data, (path, day, changes, team) -> {
                for (String id : targets(path, day, team)) {
                    Map<String, Long> fields = todo.get(id);
                    if (fields != null && raw.offset() > marks.get(id).getOrDefault(raw.mark(), -1L)) {
                        for (Fold.Change c : changes) {
                            if (c.delta() != 0) {
                                fields.merge(c.field(), c.delta(), Long::sum);
                            }
                        }
                    }
                }
            });
        }
        Map<String, Document> guards = new HashMap<>();
        for (String id : docs) {
            Document guard = new Document();
            for (String mark : marksOf.get(id)) {
                Long seen = marks.get(id).get(mark);
                guard.append("wm." + mark, seen == null ? new Document("$exists", false) : seen);
            }
            guards.put(id, guard);
        }
        return update(new ArrayList<>(docs), todo, guards);
    }
}
