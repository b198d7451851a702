package bridge.peer;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * The rules of services/metrics/metrics/projection.py (fold_into) over the JSON payload of one
 * CloudEvent: what the event adds to which counter field of which unit and day.
 *
 * <p>Every event type the projector counts is here (visits, outreach, training, registry teams,
 * volunteers and memberships); the registry's unit and campaign state is not (the peer keeps
 * counters only).
 */
final class Fold {
    static final String STATE_DAY = "state";

    /**
     * What one event does to the counters of one unit path and day (null: current state), and of the
     * team it is attributed to (null: none).
     */
    interface Emit {
        void emit(JsonNode unitPath, String day, List<Change> changes, String team);
    }

    record Change(String field, long delta) {}

    private static final String VISITS = "org.youthunion.visits.";
    private static final String TRAINING = "org.youthunion.training.";
    private static final String REGISTRY = "org.youthunion.registry.";

    private Fold() {}

    static void fold(String type, JsonNode d, Emit emit) {
        switch (type) {
            case VISITS + "visit.recorded.v1" -> visit(emit, d.get("figures"), 1);
            case VISITS + "visit.corrected.v1" -> {
                visit(emit, d.get("previous"), -1);
                visit(emit, d.get("figures"), 1);
            }
            case VISITS + "visit.voided.v1" -> visit(emit, d.get("figures"), -1);
            case VISITS + "outreach.published.v1" ->
                emit.emit(
                        d.get("unit_path"),
                        text(d, "published_on"),
                        of("outreach_posts", text(d, "channel"), 1),
                        text(d, "team_code"));
            case VISITS + "outreach.voided.v1" ->
                emit.emit(
                        d.get("unit_path"),
                        text(d, "published_on"),
                        of("outreach_posts", text(d, "channel"), -1),
                        text(d, "team_code"));
            case TRAINING + "course.scheduled.v1" -> courses(emit, d.get("course"), 1);
            case TRAINING + "course.cancelled.v1" -> {
                JsonNode c = d.get("course");
                courses(emit, c, -1);
                participants(emit, c, d.get("participants"));
                completions(emit, c, d.get("completions"));
            }
            case TRAINING + "session.held.v1", TRAINING + "participant.enrolled.v1" ->
                participants(emit, d.get("course"), d.get("participants"));
            case TRAINING + "participant.completed.v1" -> completions(emit, d.get("course"), d.get("completions"));
            case TRAINING + "course.completed.v1" -> {
                participants(emit, d.get("course"), d.get("participants"));
                completions(emit, d.get("course"), d.get("completions"));
            }
            case REGISTRY + "membership.started.v1", REGISTRY + "membership.ended.v1" -> {
                JsonNode path = d.get("team_unit_path");
                String kind = text(d, "team_kind");
                if (d.path("team_active").asBoolean(false) && kind != null && path != null && !path.isNull()) {
                    int delta = type.endsWith("started.v1") ? 1 : -1;
                    emit.emit(path, null, of("team_members", kind, delta), text(d, "team_code"));
                }
            }
            case REGISTRY + "team.created.v1" ->
                emit.emit(d.get("unit_path"), null, of("teams", text(d, "kind"), 1), text(d, "code"));
            case REGISTRY + "team.updated.v1" -> {
                if (d.path("active").asBoolean(false)) {
                    String kind = text(d, "kind");
                    long members = d.path("members").asLong(0);
                    JsonNode prevActive = d.get("previous_active");
                    if (prevActive != null && !prevActive.isNull() && !prevActive.asBoolean()) {
                        emit.emit(d.get("unit_path"), null, concat(of("teams", kind, 1), members(kind, members, 1)),
                                text(d, "code"));
                    } else {
                        String before = text(d, "previous_kind");
                        emit.emit(
                                d.get("previous_unit_path"),
                                null,
                                concat(of("teams", before, -1), members(before, members, -1)),
                                text(d, "code"));
                        emit.emit(d.get("unit_path"), null, concat(of("teams", kind, 1), members(kind, members, 1)),
                                text(d, "code"));
                    }
                }
            }
            case REGISTRY + "team.deactivated.v1" -> {
                String kind = text(d, "kind");
                emit.emit(
                        d.get("unit_path"),
                        null,
                        concat(of("teams", kind, -1), members(kind, d.path("members").asLong(0), -1)),
                        text(d, "code"));
            }
            case REGISTRY + "volunteer.registered.v1" ->
                emit.emit(d.get("unit_path"), null, volunteer(d.get("roles"), d.get("skills"), 1), null);
            case REGISTRY + "volunteer.updated.v1" -> {
                if (d.path("active").asBoolean(false)) {
                    JsonNode roles = present(d.get("previous_roles")) ? d.get("previous_roles") : d.get("roles");
                    JsonNode skills = present(d.get("previous_skills")) ? d.get("previous_skills") : d.get("skills");
                    emit.emit(d.get("previous_unit_path"), null, volunteer(roles, skills, -1), null);
                    emit.emit(d.get("unit_path"), null, volunteer(d.get("roles"), d.get("skills"), 1), null);
                }
            }
            case REGISTRY + "volunteer.left.v1" ->
                emit.emit(d.get("unit_path"), null, volunteer(d.get("roles"), d.get("skills"), -1), null);
            default -> {
                // Units, campaigns, course starts: no counter moves.
            }
        }
    }

    private static void visit(Emit emit, JsonNode f, int sign) {
        JsonNode people = f.get("people");
        JsonNode services = f.get("services");
        long households = sign * f.path("households").asLong();
        long total = sign * people.path("total").asLong();
        long elderly = sign * people.path("elderly").asLong();
        long women = sign * people.path("women").asLong();
        long veterans = sign * people.path("veterans").asLong();
        long l3 = services.path("online_applications_l3").asLong();
        long l4 = services.path("online_applications_l4").asLong();
        List<Change> changes = new ArrayList<>(15);
        changes.add(new Change("households_visited", households));
        changes.add(new Change("people_supported", total));
        changes.add(new Change("vneid_installs", sign * services.path("vneid_installed").asLong()));
        changes.add(new Change("vneid_activations", sign * services.path("vneid_activated").asLong()));
        changes.add(new Change("online_applications_l3", sign * l3));
        changes.add(new Change("online_applications_l4", sign * l4));
        changes.add(new Change("online_applications_total", sign * (l3 + l4)));
        changes.add(new Change("people_supported_by_group_elderly", elderly));
        changes.add(new Change("people_supported_by_group_women", women));
        changes.add(new Change("people_supported_by_group_veterans", veterans));
        changes.add(new Change("people_supported_by_group_total", elderly + women + veterans));
        String area = text(f, "area");
        if (area != null) {
            changes.add(new Change("people_supported_by_area_" + area, total));
            changes.add(new Change("people_supported_by_area_total", total));
            changes.add(new Change("households_by_area_" + area, households));
            changes.add(new Change("households_by_area_total", households));
        }
        emit.emit(f.get("unit_path"), text(f, "visited_on"), changes, text(f, "team_code"));
    }

    private static void courses(Emit emit, JsonNode c, int delta) {
        emit.emit(
                c.get("unit_path"),
                text(c, "starts_on"),
                concat(of("courses", text(c, "audience"), delta), byMode("courses_by_mode", c, delta)),
                text(c, "team_code"));
    }

    private static void participants(Emit emit, JsonNode c, JsonNode change) {
        long delta = change.path("after").asLong() - change.path("before").asLong();
        emit.emit(
                c.get("unit_path"),
                text(c, "starts_on"),
                concat(
                        of("course_participants", text(c, "audience"), delta),
                        byMode("course_participants_by_mode", c, delta)),
                text(c, "team_code"));
    }

    private static void completions(Emit emit, JsonNode c, JsonNode change) {
        long delta = change.path("after").asLong() - change.path("before").asLong();
        emit.emit(c.get("unit_path"), text(c, "ends_on"), List.of(new Change("course_completions", delta)), text(c, "team_code"));
    }

    private static List<Change> byMode(String indicator, JsonNode course, long delta) {
        String mode = text(course, "mode");
        return mode == null ? List.of() : of(indicator, mode, delta);
    }

    private static List<Change> members(String kind, long members, int delta) {
        return members == 0 ? List.of() : of("team_members", kind, delta * members);
    }

    private static List<Change> volunteer(JsonNode roles, JsonNode skills, int delta) {
        List<Change> out = new ArrayList<>();
        out.add(new Change("volunteers", delta));
        out.addAll(having("volunteers_by_role", roles, delta));
        out.addAll(having("volunteers_by_skill", skills, delta));
        return out;
    }

    /** One change per distinct role (or skill) held; the total adds them up. */
    private static List<Change> having(String indicator, JsonNode keys, int delta) {
        List<Change> out = new ArrayList<>();
        if (keys == null || keys.isNull()) {
            return out;
        }
        Set<String> seen = new HashSet<>();
        for (JsonNode k : keys) {
            if (seen.add(k.asText())) {
                out.addAll(of(indicator, k.asText(), delta));
            }
        }
        return out;
    }

    /** A split indicator's key field and its total. */
    private static List<Change> of(String indicator, String key, long delta) {
        return List.of(new Change(indicator + "_" + key, delta), new Change(indicator + "_total", delta));
    }

    private static List<Change> concat(List<Change> a, List<Change> b) {
        if (b.isEmpty()) {
            return a;
        }
        List<Change> out = new ArrayList<>(a.size() + b.size());
        out.addAll(a);
        out.addAll(b);
        return out;
    }

    private static boolean present(JsonNode n) {
        return n != null && !n.isNull();
    }

    private static String text(JsonNode n, String field) {
        JsonNode v = n.get(field);
        return v == null || v.isNull() ? null : v.asText();
    }
}
