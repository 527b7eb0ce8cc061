"""The curriculum in the admin, read-only: content changes go through the data file."""

from django.contrib import admin

from curriculum.models import Goal, Milestone, Phase, Project, Resource, Roadmap, SlugAlias


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Roadmap)
class RoadmapAdmin(ReadOnlyAdmin):
    list_display = ["title"]


@admin.register(Phase)
class PhaseAdmin(ReadOnlyAdmin):
    list_display = ["number", "title", "slug", "weeks"]


@admin.register(Goal)
class GoalAdmin(ReadOnlyAdmin):
    list_display = ["text", "phase", "slug"]
    list_filter = ["phase"]


@admin.register(Resource)
class ResourceAdmin(ReadOnlyAdmin):
    list_display = ["title", "phase", "slug"]
    list_filter = ["phase"]


@admin.register(Milestone)
class MilestoneAdmin(ReadOnlyAdmin):
    list_display = ["text", "phase", "slug"]


@admin.register(Project)
class ProjectAdmin(ReadOnlyAdmin):
    list_display = ["title", "difficulty", "phase", "slug"]
    list_filter = ["difficulty"]


@admin.register(SlugAlias)
class SlugAliasAdmin(ReadOnlyAdmin):
    list_display = ["old_slug", "new_slug"]
