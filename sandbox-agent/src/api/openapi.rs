//! The `OpenAPI` document served at `/openapi.json`.

/// `OpenAPI` 3.0 description of the API.
pub const DOCUMENT: &str = r##"{
  "openapi": "3.0.3",
  "info": {
    "title": "sandbox-agent",
    "version": "1",
    "description": "The sandbox-agent daemon's HTTP/JSON API, served on a Unix socket (default /run/sandbox-agent/api.sock, mode 0600: root only). Errors are a 4xx/5xx status with a JSON `ErrorBody` (except a query string or path parameter that does not parse, and an over-1 MiB stdin write: text/plain). Unknown JSON fields and query keys are refused. Durations are humantime strings such as \"30s\" or \"5m\".\n\nPrometheus metrics are not part of this API: when the config sets `metrics_address`, the daemon serves `GET /metrics` (OpenMetrics text) on that TCP address.\n\nIngress: sandboxes with exposed ports are reached through the daemon's gateway (config `ingress_address`, HTTP and HTTPS on one port) at `{port}-{sandbox}.{ingress_domain}` or `/_sandbox/{sandbox}/{port}/`, with a connect token (see `issueToken`), or through per-port tunnels (TLS, TCP)."
  },
  "servers": [
    {
      "url": "http://localhost",
      "description": "Over the daemon's Unix socket (the host name is ignored)."
    }
  ],
  "paths": {
    "/openapi.json": {
      "get": {
        "operationId": "openapi",
        "summary": "This document",
        "responses": {
          "200": {
            "description": "OpenAPI 3.0 document.",
            "content": {
              "application/json": {
                "schema": {
                  "type": "object"
                }
              }
            }
          }
        }
      }
    },
    "/v1/health": {
      "get": {
        "operationId": "health",
        "summary": "Liveness",
        "responses": {
          "200": {
            "description": "The daemon answers.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Health"
                }
              }
            }
          }
        }
      }
    },
    "/v1/sandboxes": {
      "get": {
        "operationId": "listSandboxes",
        "summary": "List sandboxes",
        "description": "Filters combine with AND; any other query key is a 400.",
        "parameters": [
          {
            "name": "name",
            "in": "query",
            "schema": {
              "type": "string"
            }
          },
          {
            "name": "state",
            "in": "query",
            "schema": {
              "type": "string",
              "enum": [
                "running",
                "exited"
              ]
            }
          },
          {
            "name": "tag",
            "in": "query",
            "description": "`key=value`; repeat for several (all must match).",
            "style": "form",
            "explode": true,
            "schema": {
              "type": "array",
              "items": {
                "type": "string",
                "pattern": "="
              }
            }
          }
        ],
        "responses": {
          "200": {
            "description": "Matching sandboxes.",
            "content": {
              "application/json": {
                "schema": {
                  "type": "array",
                  "items": {
                    "$ref": "#/components/schemas/SandboxView"
                  }
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          }
        }
      },
      "post": {
        "operationId": "createSandbox",
        "summary": "Create and start a sandbox",
        "requestBody": {
          "required": true,
          "content": {
            "application/json": {
              "schema": {
                "$ref": "#/components/schemas/CreateRequest"
              }
            }
          }
        },
        "responses": {
          "201": {
            "description": "Created and started.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/SandboxView"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          },
          "413": {
            "$ref": "#/components/responses/PayloadTooLarge"
          },
          "415": {
            "$ref": "#/components/responses/UnsupportedMediaType"
          },
          "422": {
            "$ref": "#/components/responses/Unprocessable"
          },
          "500": {
            "$ref": "#/components/responses/Internal"
          }
        },
        "description": "400 also when the workload cannot start (`exit_code` 127 or 126); 500 with `exit_code` 125 on other launch failures. 409 when the name is taken by a live sandbox."
      }
    },
    "/v1/sandboxes/{id}": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "get": {
        "operationId": "inspectSandbox",
        "summary": "Inspect a sandbox",
        "responses": {
          "200": {
            "description": "The sandbox, with live counters while running.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/SandboxView"
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      },
      "delete": {
        "operationId": "removeSandbox",
        "summary": "Remove an ended sandbox's record and output",
        "parameters": [
          {
            "name": "force",
            "in": "query",
            "schema": {
              "type": "boolean",
              "default": false
            },
            "description": "Kill a running sandbox first (otherwise 409)."
          }
        ],
        "responses": {
          "204": {
            "description": "Removed."
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          },
          "500": {
            "$ref": "#/components/responses/Internal"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/kill": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "post": {
        "operationId": "killSandbox",
        "summary": "Kill a running sandbox",
        "description": "Returns once it has ended.",
        "responses": {
          "200": {
            "description": "How it ended.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/WaitView"
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/wait": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "get": {
        "operationId": "waitSandbox",
        "summary": "Wait for the sandbox to end",
        "responses": {
          "200": {
            "description": "How it ended.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/WaitView"
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/wait-ready": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "get": {
        "operationId": "waitReady",
        "summary": "Wait until the readiness probe passes",
        "responses": {
          "200": {
            "description": "Ready.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Ready"
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "description": "No readiness probe, the probe gave up, or the sandbox ended first.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ErrorBody"
                }
              }
            }
          },
          "500": {
            "$ref": "#/components/responses/Internal"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/logs": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "get": {
        "operationId": "sandboxLogs",
        "summary": "The workload's output",
        "parameters": [
          {
            "$ref": "#/components/parameters/stream"
          },
          {
            "$ref": "#/components/parameters/follow"
          }
        ],
        "responses": {
          "200": {
            "description": "The kept output (the oldest beyond the config's `log_limit_bytes` is dropped). With `follow`, streams until the sandbox (or exec) has ended and all output is sent.",
            "content": {
              "application/octet-stream": {
                "schema": {
                  "type": "string",
                  "format": "binary"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/stdin": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "post": {
        "operationId": "writeStdin",
        "summary": "Write to the workload's stdin",
        "description": "The sandbox must have been created with `\"stdin\": true`. Counts as activity for `idle_timeout`.",
        "requestBody": {
          "required": true,
          "content": {
            "application/octet-stream": {
              "schema": {
                "type": "string",
                "format": "binary"
              }
            }
          }
        },
        "responses": {
          "204": {
            "description": "Written."
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "description": "No open stdin, or the write failed.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ErrorBody"
                }
              }
            }
          },
          "413": {
            "description": "Body over 1 MiB.",
            "content": {
              "text/plain": {
                "schema": {
                  "type": "string"
                }
              }
            }
          }
        }
      }
    },
    "/v1/sandboxes/{id}/stdin/close": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "post": {
        "operationId": "closeStdin",
        "summary": "Close the workload's stdin (EOF)",
        "responses": {
          "204": {
            "description": "Closed."
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "description": "No open stdin.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ErrorBody"
                }
              }
            }
          }
        }
      }
    },
    "/v1/sandboxes/{id}/policy": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "put": {
        "operationId": "setPolicy",
        "summary": "Replace a running sandbox's policy",
        "description": "New connections see the new policy whole at once; established connections it denies are cut. `network` defaults to `blocked`.",
        "requestBody": {
          "required": true,
          "content": {
            "application/json": {
              "schema": {
                "$ref": "#/components/schemas/Policy"
              }
            }
          }
        },
        "responses": {
          "200": {
            "description": "The sandbox with its new policy.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/SandboxView"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          },
          "413": {
            "$ref": "#/components/responses/PayloadTooLarge"
          },
          "415": {
            "$ref": "#/components/responses/UnsupportedMediaType"
          },
          "422": {
            "$ref": "#/components/responses/Unprocessable"
          },
          "500": {
            "$ref": "#/components/responses/Internal"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/execs": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "post": {
        "operationId": "exec",
        "summary": "Run a command in a running sandbox",
        "requestBody": {
          "required": true,
          "content": {
            "application/json": {
              "schema": {
                "$ref": "#/components/schemas/ExecRequest"
              }
            }
          }
        },
        "responses": {
          "201": {
            "description": "Started.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ExecView"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          },
          "413": {
            "$ref": "#/components/responses/PayloadTooLarge"
          },
          "415": {
            "$ref": "#/components/responses/UnsupportedMediaType"
          },
          "422": {
            "$ref": "#/components/responses/Unprocessable"
          },
          "500": {
            "$ref": "#/components/responses/Internal"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/execs/{exec}/wait": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        },
        {
          "$ref": "#/components/parameters/exec"
        }
      ],
      "get": {
        "operationId": "waitExec",
        "summary": "Wait for an exec to end",
        "responses": {
          "200": {
            "description": "How it ended.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ExecWait"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/execs/{exec}/logs": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        },
        {
          "$ref": "#/components/parameters/exec"
        }
      ],
      "get": {
        "operationId": "execLogs",
        "summary": "An exec's output",
        "parameters": [
          {
            "$ref": "#/components/parameters/stream"
          },
          {
            "$ref": "#/components/parameters/follow"
          }
        ],
        "responses": {
          "200": {
            "description": "The kept output (the oldest beyond the config's `log_limit_bytes` is dropped). With `follow`, streams until the sandbox (or exec) has ended and all output is sent.",
            "content": {
              "application/octet-stream": {
                "schema": {
                  "type": "string",
                  "format": "binary"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/events": {
      "get": {
        "operationId": "events",
        "summary": "Verdict events",
        "description": "The kept history (up to 10000 events), then with `follow` every new event until the daemon stops. Each line is one JSON object, see the `Event` schema.",
        "parameters": [
          {
            "$ref": "#/components/parameters/follow"
          },
          {
            "name": "sandbox",
            "in": "query",
            "schema": {
              "type": "string"
            },
            "description": "Only this sandbox (id or name)."
          },
          {
            "name": "verdict",
            "in": "query",
            "schema": {
              "type": "string",
              "enum": [
                "allowed",
                "denied"
              ]
            }
          }
        ],
        "responses": {
          "200": {
            "description": "Newline-delimited JSON `Event` objects.",
            "content": {
              "application/x-ndjson": {
                "schema": {
                  "type": "string"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/tunnels": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "get": {
        "operationId": "tunnels",
        "summary": "Where the sandbox's exposed ports are reached",
        "description": "HTTP and h2 ports: gateway URLs by host name and by path. TLS and TCP ports: the tunnel's address.",
        "responses": {
          "200": {
            "description": "Each exposed port.",
            "content": {
              "application/json": {
                "schema": {
                  "type": "array",
                  "items": {
                    "$ref": "#/components/schemas/PortView"
                  }
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/tokens": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        }
      ],
      "post": {
        "operationId": "issueToken",
        "summary": "A connect token for the sandbox's HTTP ports",
        "description": "Random, stored hashed, scoped to this sandbox, revocable, and gone when the sandbox ends. The secret (`token`) appears in this answer only. Callers present it as `Authorization: Bearer`, the `_sandbox_connect_token` query parameter (the answer then sets it as a cookie) or that cookie. `user_metadata` reaches the workload in `X-Verified-User-Data`; a client-sent header of that name is removed.",
        "requestBody": {
          "required": true,
          "content": {
            "application/json": {
              "schema": {
                "$ref": "#/components/schemas/TokenRequest"
              }
            }
          }
        },
        "responses": {
          "201": {
            "description": "The token, with its secret and the URLs it opens.",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/TokenView"
                }
              }
            }
          },
          "400": {
            "$ref": "#/components/responses/BadRequest"
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          },
          "409": {
            "$ref": "#/components/responses/Conflict"
          }
        }
      },
      "get": {
        "operationId": "listTokens",
        "summary": "The sandbox's live tokens, without their secrets",
        "responses": {
          "200": {
            "description": "Tokens.",
            "content": {
              "application/json": {
                "schema": {
                  "type": "array",
                  "items": {
                    "$ref": "#/components/schemas/TokenView"
                  }
                }
              }
            }
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    },
    "/v1/sandboxes/{id}/tokens/{token}": {
      "parameters": [
        {
          "$ref": "#/components/parameters/id"
        },
        {
          "name": "token",
          "in": "path",
          "required": true,
          "description": "The token's id (not its secret).",
          "schema": {
            "type": "string"
          }
        }
      ],
      "delete": {
        "operationId": "revokeToken",
        "summary": "Revoke a connect token",
        "responses": {
          "204": {
            "description": "Revoked: requests carrying it get 401 from now on."
          },
          "404": {
            "$ref": "#/components/responses/NotFound"
          }
        }
      }
    }
  },
  "components": {
    "schemas": {
      "Policy": {
        "type": "object",
        "additionalProperties": false,
        "description": "A network policy. Entries are IPv4/IPv6 addresses or CIDRs, domain names, `*.suffix` wildcards, or presets (`@all`, `@cloud-metadata`, `@private`, `@loopback`, `@pypi`, `@npm`, `@crates`, `@github`). The operator's floor (`floor_deny`) is denied whatever the policy says. Refused whole (400) when an entry is invalid.",
        "properties": {
          "network": {
            "type": "string",
            "nullable": true,
            "enum": [
              "blocked",
              "open",
              "allowlist",
              null
            ],
            "description": "What is reachable when no rule matches: `blocked` (nothing, allow_out refused), `open` (everything but deny_out), `allowlist` (only allow_out, minus deny_out). Default `blocked` for a sandbox, `open` (the sandbox's policy alone) for an exec."
          },
          "allow_out": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "default": []
          },
          "deny_out": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "default": []
          },
          "precedence": {
            "type": "string",
            "nullable": true,
            "enum": [
              "deny-wins",
              "allow-wins",
              "most-specific",
              null
            ],
            "description": "How a matching allow and deny entry are settled (default `deny-wins`)."
          }
        }
      },
      "ProbeSpec": {
        "type": "object",
        "additionalProperties": false,
        "description": "Readiness probe: exactly one of `tcp_port` (a listening TCP port inside the sandbox) or `exec` (a command that exits 0).",
        "properties": {
          "tcp_port": {
            "type": "integer",
            "minimum": 0,
            "maximum": 65535,
            "nullable": true
          },
          "exec": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "nullable": true,
            "minItems": 1
          },
          "interval": {
            "type": "string",
            "nullable": true,
            "description": "Between attempts (default \"100ms\"). A humantime duration, e.g. \"100ms\", \"30s\", \"5m\", \"1h 30m\"."
          },
          "timeout": {
            "type": "string",
            "nullable": true,
            "description": "Give up after (default \"5m\"). A humantime duration, e.g. \"100ms\", \"30s\", \"5m\", \"1h 30m\"."
          }
        }
      },
      "CreateRequest": {
        "type": "object",
        "additionalProperties": false,
        "description": "The command run is `entrypoint` followed by `command`; at least one must be non-empty.",
        "properties": {
          "command": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "default": [],
            "description": "Arguments after the entrypoint; the whole command when there is no entrypoint."
          },
          "entrypoint": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "default": [],
            "description": "Program and leading arguments, run before `command`."
          },
          "env": {
            "type": "object",
            "additionalProperties": {
              "type": "string"
            },
            "default": {}
          },
          "cwd": {
            "type": "string",
            "nullable": true,
            "description": "Working directory (default `/`)."
          },
          "user": {
            "type": "string",
            "nullable": true,
            "description": "User name or uid (default `nobody`)."
          },
          "name": {
            "type": "string",
            "nullable": true,
            "pattern": "^[A-Za-z0-9._-]{1,63}$",
            "description": "Unique among live sandboxes (409 if taken)."
          },
          "tags": {
            "type": "object",
            "additionalProperties": {
              "type": "string"
            },
            "default": {}
          },
          "policy": {
            "$ref": "#/components/schemas/Policy"
          },
          "timeout": {
            "type": "string",
            "nullable": true,
            "description": "Maximum lifetime: more than 0, at most 24h (default \"5m\"). A humantime duration, e.g. \"100ms\", \"30s\", \"5m\", \"1h 30m\"."
          },
          "idle_timeout": {
            "type": "string",
            "nullable": true,
            "description": "End the sandbox after this long without a running exec, a stdin write or an open proxied connection. A humantime duration, e.g. \"100ms\", \"30s\", \"5m\", \"1h 30m\"."
          },
          "probe": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/ProbeSpec"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ]
          },
          "stdin": {
            "type": "boolean",
            "default": false,
            "description": "Keep stdin open for `POST .../stdin` (otherwise it reads /dev/null)."
          },
          "proxy_env": {
            "type": "boolean",
            "default": false,
            "description": "Set HTTP_PROXY/HTTPS_PROXY/ALL_PROXY to the sandbox's explicit proxy."
          },
          "ports": {
            "type": "array",
            "items": {
              "$ref": "#/components/schemas/ExposedPort"
            },
            "default": [],
            "description": "Ports reachable from outside through the agent's ingress; nothing else is (a sandbox accepts no other inbound connection)."
          },
          "private_ports": {
            "type": "boolean",
            "default": false,
            "description": "Every HTTP request must also carry the sandbox's traffic token in `X-Sandbox-Traffic-Token` (returned once, as `traffic_token` in this create's answer)."
          },
          "mask_host": {
            "type": "string",
            "description": "The Host header the workload sees on HTTP ports; `${PORT}` is replaced by the port, e.g. `localhost:${PORT}`."
          },
          "max_learned_addresses": {
            "type": "integer",
            "minimum": 1,
            "maximum": 262144,
            "description": "Addresses the sandbox's resolver may hold learned at a time (default: the daemon's `learned_per_sandbox`, 4096). Past it, new addresses are not learned (connects to them are refused) and an event says so."
          }
        }
      },
      "ExecRequest": {
        "type": "object",
        "additionalProperties": false,
        "required": [
          "command"
        ],
        "properties": {
          "command": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "minItems": 1
          },
          "env": {
            "type": "object",
            "additionalProperties": {
              "type": "string"
            },
            "default": {}
          },
          "cwd": {
            "type": "string",
            "nullable": true,
            "description": "Default: the sandbox's."
          },
          "user": {
            "type": "string",
            "nullable": true,
            "description": "Default: the sandbox's."
          },
          "policy": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/Policy"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ],
            "description": "A narrower policy for this command, applied on top of the sandbox's (and the floor); `network` defaults to `open`."
          }
        }
      },
      "CountersView": {
        "type": "object",
        "description": "Per-sandbox kernel counters.",
        "required": [
          "allowed_packets",
          "allowed_bytes",
          "denied_packets",
          "denied_bytes",
          "denied_connects",
          "denied_sends",
          "dns_redirects",
          "proxy_redirects",
          "learned_connects"
        ],
        "properties": {
          "allowed_packets": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "allowed_bytes": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "denied_packets": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "denied_bytes": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "denied_connects": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "denied_sends": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "dns_redirects": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "proxy_redirects": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "learned_connects": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          }
        }
      },
      "ExecView": {
        "type": "object",
        "required": [
          "id",
          "command",
          "state",
          "exit_code",
          "policy",
          "cgroup_id"
        ],
        "properties": {
          "id": {
            "type": "integer",
            "format": "int32",
            "minimum": 0
          },
          "command": {
            "type": "array",
            "items": {
              "type": "string"
            }
          },
          "state": {
            "type": "string",
            "enum": [
              "running",
              "exited"
            ]
          },
          "exit_code": {
            "type": "integer",
            "format": "int32",
            "nullable": true,
            "description": "128 + signal when killed; null while running."
          },
          "policy": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/Policy"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ]
          },
          "cgroup_id": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          }
        }
      },
      "SandboxView": {
        "type": "object",
        "required": [
          "id",
          "name",
          "tags",
          "state",
          "ready",
          "command",
          "cwd",
          "user",
          "policy",
          "timeout_ms",
          "idle_timeout_ms",
          "probe",
          "stdin",
          "created_at",
          "ended_at",
          "exit_code",
          "end_reason",
          "pid",
          "cgroup_id",
          "policy_id",
          "execs"
        ],
        "properties": {
          "id": {
            "type": "string",
            "description": "12 hex digits."
          },
          "name": {
            "type": "string",
            "nullable": true
          },
          "tags": {
            "type": "object",
            "additionalProperties": {
              "type": "string"
            }
          },
          "state": {
            "type": "string",
            "enum": [
              "running",
              "exited"
            ]
          },
          "ready": {
            "type": "boolean",
            "description": "True once the probe passed (at once without a probe)."
          },
          "command": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "description": "Entrypoint and command."
          },
          "cwd": {
            "type": "string"
          },
          "user": {
            "type": "string"
          },
          "policy": {
            "$ref": "#/components/schemas/Policy"
          },
          "timeout_ms": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "idle_timeout_ms": {
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "nullable": true
          },
          "probe": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/ProbeSpec"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ]
          },
          "stdin": {
            "type": "boolean"
          },
          "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339."
          },
          "ended_at": {
            "type": "string",
            "format": "date-time",
            "nullable": true
          },
          "exit_code": {
            "type": "integer",
            "format": "int32",
            "nullable": true,
            "description": "128 + signal when killed (137 for SIGKILL); null while running, or when the workload ended while no daemon was watching."
          },
          "end_reason": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/EndReason"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ]
          },
          "pid": {
            "type": "integer",
            "format": "int32"
          },
          "cgroup_id": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "policy_id": {
            "type": "integer",
            "format": "int32",
            "minimum": 0
          },
          "execs": {
            "type": "array",
            "items": {
              "$ref": "#/components/schemas/ExecView"
            }
          },
          "counters": {
            "allOf": [
              {
                "$ref": "#/components/schemas/CountersView"
              }
            ],
            "description": "At the time of the request; absent once the sandbox ended."
          },
          "ports": {
            "type": "array",
            "items": {
              "$ref": "#/components/schemas/PortView"
            }
          },
          "private_ports": {
            "type": "boolean"
          },
          "mask_host": {
            "type": "string"
          },
          "max_learned_addresses": {
            "type": "integer"
          },
          "traffic_token": {
            "type": "string",
            "description": "A `private_ports` sandbox's traffic token: only in the answer to its create (the record keeps a hash)."
          }
        }
      },
      "Null": {
        "type": "object",
        "nullable": true,
        "enum": [
          null
        ],
        "description": "JSON null: the value is absent."
      },
      "EndReason": {
        "type": "string",
        "enum": [
          "exited",
          "killed",
          "timeout",
          "idle-timeout",
          "status-unknown"
        ],
        "description": "`status-unknown`: the workload ended while no daemon was watching."
      },
      "WaitView": {
        "type": "object",
        "required": [
          "exit_code",
          "end_reason"
        ],
        "properties": {
          "exit_code": {
            "type": "integer",
            "format": "int32",
            "nullable": true
          },
          "end_reason": {
            "anyOf": [
              {
                "$ref": "#/components/schemas/EndReason"
              },
              {
                "$ref": "#/components/schemas/Null"
              }
            ]
          }
        }
      },
      "ExecWait": {
        "type": "object",
        "required": [
          "exit_code",
          "state"
        ],
        "properties": {
          "exit_code": {
            "type": "integer",
            "format": "int32",
            "nullable": true,
            "description": "128 + signal when killed (137 when the sandbox ended first)."
          },
          "state": {
            "type": "string",
            "enum": [
              "running",
              "exited"
            ]
          }
        }
      },
      "Ready": {
        "type": "object",
        "required": [
          "ready"
        ],
        "properties": {
          "ready": {
            "type": "boolean",
            "enum": [
              true
            ]
          }
        }
      },
      "Health": {
        "type": "object",
        "required": [
          "status"
        ],
        "properties": {
          "status": {
            "type": "string",
            "enum": [
              "ok"
            ]
          }
        }
      },
      "Event": {
        "type": "object",
        "description": "One line of `GET /v1/events`. Kernel denials have `source` \"kernel\" with `kind`, `peer`, `port`, `cgroup_id`; resolver and proxy decisions have `source` \"dns\" or \"proxy\" with `name`, `qtype`, `original_dst`, `resolved`, `bytes_out`, `bytes_in`. Absent fields are omitted.",
        "required": [
          "ts_ms",
          "sandbox",
          "source",
          "verdict",
          "reason"
        ],
        "properties": {
          "ts_ms": {
            "type": "integer",
            "format": "int64",
            "description": "Milliseconds since the Unix epoch."
          },
          "sandbox": {
            "type": "string",
            "nullable": true
          },
          "source": {
            "type": "string",
            "nullable": true,
            "enum": [
              "kernel",
              "dns",
              "proxy",
              null
            ]
          },
          "verdict": {
            "type": "string",
            "enum": [
              "allowed",
              "denied"
            ]
          },
          "reason": {
            "type": "string"
          },
          "kind": {
            "type": "string",
            "enum": [
              "connect",
              "send",
              "egress-packet",
              "ingress-packet"
            ]
          },
          "peer": {
            "type": "string"
          },
          "port": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65535
          },
          "cgroup_id": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "name": {
            "type": "string",
            "description": "DNS question, SNI or Host, normalised."
          },
          "qtype": {
            "type": "string"
          },
          "original_dst": {
            "type": "string",
            "description": "addr:port the client wanted."
          },
          "resolved": {
            "type": "array",
            "items": {
              "type": "string"
            },
            "description": "Where the agent went, or the addresses a DNS answer carried."
          },
          "bytes_out": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          },
          "bytes_in": {
            "type": "integer",
            "format": "int64",
            "minimum": 0
          }
        }
      },
      "ErrorBody": {
        "type": "object",
        "required": [
          "error"
        ],
        "properties": {
          "error": {
            "type": "string",
            "description": "One line naming the problem."
          },
          "exit_code": {
            "type": "integer",
            "format": "int32",
            "description": "Only when the workload could not start (the status `run` exits with): 127 not found, 126 cannot execute, 125 other failures."
          }
        }
      },
      "ExposedPort": {
        "type": "object",
        "additionalProperties": false,
        "required": [
          "port",
          "protocol"
        ],
        "properties": {
          "port": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65535
          },
          "protocol": {
            "type": "string",
            "enum": [
              "http",
              "h2",
              "tls",
              "tcp"
            ],
            "description": "`http`: HTTP/1.1 and WebSocket through the gateway, token-checked. `h2`: the same, the workload speaks cleartext HTTP/2 (prior knowledge). `tls`: a tunnel whose TLS ends at the agent. `tcp`: a raw TCP tunnel (the workload authenticates)."
          }
        }
      },
      "PortView": {
        "type": "object",
        "required": [
          "port",
          "protocol",
          "url"
        ],
        "properties": {
          "port": {
            "type": "integer"
          },
          "protocol": {
            "type": "string",
            "enum": [
              "http",
              "h2",
              "tls",
              "tcp"
            ]
          },
          "url": {
            "type": "string",
            "description": "Gateway URL by host name `{port}-{sandbox}.{ingress_domain}` (HTTP), or `tls://`/`tcp://` tunnel address."
          },
          "path_url": {
            "type": "string",
            "description": "HTTP ports: the gateway by path prefix `/_sandbox/{sandbox}/{port}/`."
          },
          "tunnel": {
            "type": "string",
            "description": "TLS and TCP ports: the tunnel's listening address."
          }
        }
      },
      "TokenRequest": {
        "type": "object",
        "additionalProperties": false,
        "properties": {
          "user_metadata": {
            "description": "Any JSON value, at most 511 bytes serialized; passed to the workload in `X-Verified-User-Data`."
          }
        }
      },
      "TokenView": {
        "type": "object",
        "required": [
          "id",
          "sandbox",
          "created_at",
          "urls"
        ],
        "properties": {
          "id": {
            "type": "string"
          },
          "sandbox": {
            "type": "string"
          },
          "token": {
            "type": "string",
            "description": "The secret: only in the answer that made it."
          },
          "user_metadata": {},
          "created_at": {
            "type": "string",
            "format": "date-time"
          },
          "urls": {
            "type": "array",
            "items": {
              "$ref": "#/components/schemas/PortView"
            }
          }
        }
      }
    },
    "responses": {
      "BadRequest": {
        "description": "Invalid input (JSON ErrorBody). Malformed query strings or path parameters are refused by the framework with a text/plain body.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          },
          "text/plain": {
            "schema": {
              "type": "string"
            }
          }
        }
      },
      "NotFound": {
        "description": "No sandbox (or exec) with that id or name.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      },
      "Conflict": {
        "description": "The sandbox's state does not allow it.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      },
      "PayloadTooLarge": {
        "description": "Body over 1 MiB.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      },
      "UnsupportedMediaType": {
        "description": "The body needs `Content-Type: application/json`.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      },
      "Unprocessable": {
        "description": "The JSON does not fit the schema (wrong type, unknown field, unknown enum value).",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      },
      "Internal": {
        "description": "The daemon failed.",
        "content": {
          "application/json": {
            "schema": {
              "$ref": "#/components/schemas/ErrorBody"
            }
          }
        }
      }
    },
    "parameters": {
      "id": {
        "name": "id",
        "in": "path",
        "required": true,
        "schema": {
          "type": "string"
        },
        "description": "Sandbox id, or name (a live sandbox of that name first, else the latest)."
      },
      "exec": {
        "name": "exec",
        "in": "path",
        "required": true,
        "schema": {
          "type": "integer",
          "format": "int32",
          "minimum": 0
        },
        "description": "Exec id."
      },
      "stream": {
        "name": "stream",
        "in": "query",
        "schema": {
          "type": "string",
          "enum": [
            "stdout",
            "stderr"
          ],
          "default": "stdout"
        }
      },
      "follow": {
        "name": "follow",
        "in": "query",
        "schema": {
          "type": "boolean",
          "default": false
        }
      }
    }
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(v["openapi"], "3.0.3");
        assert!(v["paths"]["/v1/sandboxes"].is_object());
        assert!(v["paths"]["/v1/sandboxes/{id}/tokens"]["post"].is_object());
        assert!(v["components"]["schemas"]["CreateRequest"]["properties"]["ports"].is_object());
    }
}
