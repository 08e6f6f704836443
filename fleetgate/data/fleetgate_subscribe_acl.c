/* fleetgate's Mosquitto 2.0 plugin: which subscriptions a client may make
 * (docs/device-identity.md). `fleetgate broker-config` builds it next to the password file and
 * ACL it generates.
 *
 * Mosquitto's acl_file never checks a SUBSCRIBE: it grants every filter and checks read access
 * for each message it delivers. For a plain subscription that is enough, but a device that
 * subscribes to the gateway's shared subscription ($share/fleetgate/fg/v1/+/telemetry) joins the
 * gateway's group: the broker gives it its turn of everyone's telemetry, finds it may not read
 * them and drops them, and the gateway never sees them. This plugin refuses such a SUBSCRIBE
 * (SUBACK "not authorised") with the rule gateway/broker_auth.py's authorize() applies for
 * brokers that ask over HTTP:
 *
 *   - a gateway user (one per line in the file named by plugin_opt_gateway_users) may subscribe
 *     to any filter within the topic root (plugin_opt_topic_root), shared or not;
 *   - every other user (a device: username = device id) only to exactly
 *     {topic root}/{username}/cmd: no wildcard, no $share, nobody else's topic.
 *
 * Publishing, delivery and passwords stay with password_file and acl_file: an allowed
 * subscription is passed on to them (MOSQ_ERR_PLUGIN_DEFER). The gateway list is read at start
 * and again on every reload (SIGHUP); if it cannot be read at start the broker does not start.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id;
static char *topic_root;
static char *gateways_path;
/* The gateway user names, each ended by '\0', the list ended by an empty name. */
static char *gateways;

static char *read_gateways(const char *path)
{
	FILE *f = fopen(path, "rb");
	if(f == NULL) return NULL;
	size_t cap = 4096, len = 0, n;
	char *text = malloc(cap + 1);
	while(text != NULL && (n = fread(text + len, 1, cap - len, f)) > 0){
		len += n;
		if(len == cap){
			char *grown = realloc(text, 2 * cap + 1);
			if(grown == NULL){
				free(text);
				text = NULL;
				break;
			}
			text = grown;
			cap *= 2;
		}
	}
	bool failed = ferror(f) != 0;
	fclose(f);
	if(text == NULL || failed){
		free(text);
		return NULL;
	}
	text[len] = '\0';

	/* The names in place: blank lines and # comments skipped, surrounding blanks trimmed. */
	char *out = text, *line = text, *end;
	while(*line){
		end = line + strcspn(line, "\n");
		char *next = *end ? end + 1 : end;
		while(line < end && strchr(" \t\r", *line)) line++;
		while(end > line && strchr(" \t\r", end[-1])) end--;
		if(end > line && *line != '#'){
			size_t size = (size_t)(end - line);
			memmove(out, line, size);
			out[size] = '\0';
			out += size + 1;
		}
		line = next;
	}
	*out = '\0';
	return text;
}

static bool is_gateway(const char *username)
{
	for(const char *name = gateways; name != NULL && *name; name += strlen(name) + 1){
		if(!strcmp(name, username)) return true;
	}
	return false;
}

/* The filter, or the filter of a shared subscription ($share/{group}/{filter}), lies within the
 * topic root. */
static bool within_root(const char *filter)
{
	if(!strncmp(filter, "$share/", 7)){
		filter = strchr(filter + 7, '/');
		if(filter == NULL) return false;
		filter++;
	}
	size_t r = strlen(topic_root);
	return !strncmp(filter, topic_root, r) && (filter[r] == '\0' || filter[r] == '/');
}

/* The filter is exactly {topic root}/{username}/cmd. */
static bool is_own_command_topic(const char *username, const char *filter)
{
	size_t r = strlen(topic_root), u = strlen(username);
	return u > 0 && !strpbrk(username, "/+#") && !strncmp(filter, topic_root, r)
		&& filter[r] == '/' && !strncmp(filter + r + 1, username, u)
		&& !strcmp(filter + r + 1 + u, "/cmd");
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;
	const char *username = mosquitto_client_username(ed->client);
	bool allowed;
	if(username == NULL){
		allowed = false;
	}else if(is_gateway(username)){
		allowed = within_root(ed->topic);
	}else{
		allowed = is_own_command_topic(username, ed->topic);
	}
	return allowed ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_ACL_DENIED;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;

	char *fresh = read_gateways(gateways_path);
	if(fresh == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleetgate: cannot read %s; keeping the "
				"gateway users read before", gateways_path);
	}else{
		free(gateways);
		gateways = fresh;
	}
	/* Other plugins' reload callbacks run too. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	const char *root = NULL, *path = NULL;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "topic_root")) root = options[i].value;
		if(!strcmp(options[i].key, "gateway_users")) path = options[i].value;
	}
	if(root == NULL || *root == '\0' || path == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetgate: plugin_opt_topic_root and "
				"plugin_opt_gateway_users are required");
		return MOSQ_ERR_INVAL;
	}
	topic_root = strdup(root);
	gateways_path = strdup(path);
	gateways = read_gateways(path);
	if(topic_root == NULL || gateways_path == NULL || gateways == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetgate: cannot read the gateway users from %s",
				path);
		return MOSQ_ERR_INVAL;
	}
	plugin_id = identifier;
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	if(plugin_id != NULL){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	}
	free(topic_root);
	free(gateways_path);
	free(gateways);
	topic_root = gateways_path = gateways = NULL;
	return MOSQ_ERR_SUCCESS;
}
