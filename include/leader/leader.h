#pragma once

/// Umbrella header of the leader library.
#include "leader/config.h"
#include "leader/connection.h"
#include "leader/connection_flags.h"
#include "leader/election.h"
#include "leader/error.h"
#include "leader/fencing.h"
#include "leader/observer.h"
#include "leader/role_manager.h"
#include "leader/telemetry.h"
#include "leader/types.h"
